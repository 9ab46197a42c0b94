"""Continuous-batching engine on mlx-lm's ``BatchGenerator``, on one owned thread.

The event loop talks to the engine thread through a command queue; the thread
answers through ``loop.call_soon_threadsafe`` onto each request's asyncio
queue. Requests join the running batch between decode steps and leave it as
they finish or are cancelled, so a cancel takes effect within one step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darkbloom.node.engine.base import EngineEvent, Failed, Finished, TextDelta
from darkbloom.node.engine.constrain import (
    GrammarConstraint,
    MatcherCache,
    can_constrain,
    grammar_tokenizer,
    tool_call_grammar,
)
from darkbloom.node.engine.stops import StopMatcher
from darkbloom.node.engine.tools import ToolCallExtractor
from darkbloom.protocol import ChatMessage, SamplingParams, SlotCapacity, TokenLogprob, ToolCall, TopLogprob, Usage
from darkbloom.protocol.structured import JSON_OBJECT_SCHEMA, MAX_SCHEMA_CHARS
from darkbloom.protocol.structured import grammar as json_grammar

log = logging.getLogger(__name__)


@dataclass
class _Active:
    request_id: str
    uid: int
    events: asyncio.Queue[EngineEvent]
    detok: Any
    stops: StopMatcher
    prompt_tokens: int
    tools: ToolCallExtractor | None = None
    one_call: bool = False  # ``parallel_tool_calls`` off: the answer ends with its first tool call
    constraint: GrammarConstraint | None = None  # ``response_format`` or a forced tool call: decoding kept in a grammar
    top_logprobs: int | None = None  # report each token's log probability, and this many alternatives
    logprobs: list[TokenLogprob] = field(default_factory=list)  # for the tokens not reported yet
    reserved_tokens: int = 0
    cached_tokens: int = 0
    generated: int = 0
    unsent_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


def template_messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them; tool-call arguments as objects, as HF templates render them."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _json_or_text(c.arguments)}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.name:
            msg["name"] = m.name
        out.append(msg)
    return out


def hidden_token_ids(tok: Any) -> frozenset[int]:
    """Tokens whose text never reaches an answer: the tokenizer's special tokens.

    As Hugging Face's ``skip_special_tokens`` (vLLM's default): a chat
    model that samples ``<|im_start|>`` must not show it to the consumer.
    The tokens that mark tool calls stay, even where they are special: the
    tool-call parser reads them. The tokens are still generated and counted.
    """
    markers = {getattr(tok, "tool_call_start", None), getattr(tok, "tool_call_end", None)} - {None, ""}
    added = getattr(tok, "added_tokens_decoder", None) or {}
    ids = {i for i, t in added.items() if getattr(t, "special", False) and getattr(t, "content", None) not in markers}
    for i in getattr(tok, "all_special_ids", None) or ():
        if tok.convert_ids_to_tokens(i) not in markers:
            ids.add(i)
    return frozenset(ids)


def _continuing(detok: Any, prompt: list[int]) -> Any:
    """``detok`` primed with the prompt's last token, so the answer's first word keeps its leading space.

    mlx-lm's streaming detokenizers drop a space at the very start of their
    text, right for a new turn ("Hello") but wrong for a continuation: "The
    capital of France is" goes on " Paris", not "Paris". The primed text is
    taken off here; only what the model adds is streamed.
    """
    detok.add_token(prompt[-1])
    detok.finalize()
    _ = detok.last_segment
    del detok.tokens[:]
    return detok


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _seeded_sampler(temperature: float, top_p: float, seed: int) -> Any:
    """A sampler with its own PRNG key, so a seed holds inside a shared batch."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_p

    state = {"key": mx.random.key(seed)}

    def sample(logprobs: Any) -> Any:
        state["key"], sub = mx.random.split(state["key"])
        if top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * (1.0 / temperature), key=sub)

    return sample


class MLXEngine:
    """Serves one model directory with continuous batching.

    Args:
        model_path: A local MLX model directory (config, safetensors, tokenizer).
        model_id: The id advertised to the coordinator.
        max_concurrency: Most sequences decoding at once.
        context_length: Longest prompt + completion accepted.
    """

    def __init__(
        self,
        model_path: str | Path,
        model_id: str,
        *,
        max_concurrency: int = 8,
        context_length: int | None = None,
        prefill_step_size: int = 512,
        kv_bytes_per_token: int = 0,
        prompt_cache_size: int = 16,
        prompt_cache_bytes: int = 512 * 2**20,
        gather_s: float = 0.004,
    ) -> None:
        self.model_id = model_id
        self.model_path = Path(model_path)
        self.max_concurrency = max_concurrency
        self._prefill_step = prefill_step_size
        # An idle engine that gets a request waits this long for others before its first step, so
        # requests that arrive together are prefilled together rather than one behind the other.
        self._gather_s = gather_s
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._active: dict[int, _Active] = {}
        self._by_request: dict[str, int] = {}
        self._waiting = 0
        self._waiting_tokens = 0
        self.kv_bytes_per_token = kv_bytes_per_token
        # KV of finished requests, found again by longest common prefix (chat templates share
        # their system preamble, conversations their history): the prefill it saves is TTFT.
        self._cache_size = prompt_cache_size
        self._cache_bytes = prompt_cache_bytes
        self._prompt_cache: Any = None
        self.crashed: str = ""
        self._decode_tps = 0.0
        self._prefill_tps = 0.0
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.context_length = context_length or 0
        self._grammar_tok: Any = None  # llguidance's view of the tokenizer (JSON output)
        self._matchers: Any = None  # MatcherCache over it
        self._token_texts: dict[int, tuple[str, str]] = {}  # token id -> (text, raw hex if not whole UTF-8)
        self._thread = threading.Thread(target=self._run, name=f"mlx-{model_id}", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; re-raise a load failure."""
        self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error

    def submit(
        self,
        request_id: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        events: asyncio.Queue[EngineEvent],
    ) -> None:
        self._waiting += 1
        self._waiting_tokens += params.max_tokens
        self._commands.put(("submit", (request_id, messages, params, events, asyncio.get_running_loop())))

    def cancel(self, request_id: str) -> None:
        self._commands.put(("cancel", request_id))

    @property
    def alive(self) -> bool:
        """False once the engine thread has died (the slot is then ``crashed``)."""
        return self._thread.is_alive() and not self.crashed

    def capacity(self) -> SlotCapacity:
        # Reserved tokens (prompt + max_tokens of each running request) are what the
        # coordinator's admission adds up against the budget, so report the same unit.
        active = list(self._active.values())
        running = len(active)
        return SlotCapacity(
            model=self.model_id,
            state="running" if running or self._waiting else "idle",
            num_running=running,
            num_waiting=self._waiting,
            max_concurrency=self.max_concurrency,
            active_token_budget_used=sum(a.reserved_tokens for a in active),
            active_token_budget_max=self.context_length * self.max_concurrency,
            queued_token_budget=max(0, self._waiting_tokens),
            kv_bytes_per_token=self.kv_bytes_per_token,
            observed_decode_tps=round(self._decode_tps, 2),
            observed_prefill_tps=round(self._prefill_tps, 2),
        )

    def close(self) -> None:
        self._commands.put(("close", None))
        self._thread.join(timeout=10)

    # ---- engine thread ------------------------------------------------------------------

    def _emit(self, act: _Active | None, loop: asyncio.AbstractEventLoop, q: asyncio.Queue[EngineEvent], ev: EngineEvent) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, ev)
        except RuntimeError:  # the loop is gone; nobody is listening any more
            pass

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the slot reports crashed; every request still gets its terminal event
            log.exception("engine thread for %s died", self.model_id)
            self.crashed = f"{type(exc).__name__}: {exc}"
            self._fail_all(f"the model's engine crashed: {self.crashed}")
        finally:
            # mlx does not free a thread's streams when it ends; without this the
            # process can abort (exit 134) at interpreter shutdown (mlx#3126).
            mx = sys.modules.get("mlx.core")
            if mx is not None and hasattr(mx, "clear_streams"):
                mx.clear_streams()

    def _serve(self) -> None:
        try:
            import mlx.core as mx
            from mlx_lm import load
            from mlx_lm.generate import BatchGenerator

            self._mx = mx
            self._model, self._tok = load(str(self.model_path))
            cfg_ctx = getattr(self._model.args, "max_position_embeddings", None) if hasattr(self._model, "args") else None
            if not self.context_length:
                self.context_length = int(cfg_ctx or 4096)
            if self._cache_size > 0:
                from mlx_lm.models.cache import LRUPromptCache

                self._prompt_cache = LRUPromptCache(max_size=self._cache_size, max_bytes=self._cache_bytes)
            self._hidden = hidden_token_ids(self._tok)
            if can_constrain(self.model_path):
                # Built now (a quarter of a second for a 49k vocabulary), not at the first JSON
                # request, where it would stall every stream in the batch.
                try:
                    self._grammar_tok = grammar_tokenizer(self._tok)
                    self._matchers = MatcherCache(self._grammar_tok)
                except Exception as exc:  # the model still serves; JSON requests get a 400 saying why
                    log.warning("JSON output unavailable for %s: %s", self.model_id, exc)
            eos = [[t] for t in sorted(self._tok.eos_token_ids)]
            self._gen = BatchGenerator(
                self._model,
                stop_tokens=eos,
                completion_batch_size=self.max_concurrency,
                prefill_batch_size=min(8, self.max_concurrency),
                prefill_step_size=self._prefill_step,
            )
        except BaseException as exc:  # reported to whoever waits for readiness
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}
        while True:
            block = not self._active
            try:
                cmd, arg = self._commands.get(block=block)
            except queue.Empty:
                self._step()
                continue
            if cmd == "close":
                self._shutdown()
                return
            self._handle(cmd, arg)
            # Drain every command that is already queued before the next step; coming out of idle,
            # also those that arrive within the gather window (a burst is prefilled as one batch).
            gather_until = time.perf_counter() + self._gather_s if block and self._gather_s > 0 else 0.0
            while True:
                try:
                    wait = gather_until - time.perf_counter()
                    cmd, arg = self._commands.get(timeout=wait) if wait > 0 else self._commands.get_nowait()
                except queue.Empty:
                    break
                if cmd == "close":
                    self._shutdown()
                    return
                self._handle(cmd, arg)
            if self._active:
                self._step()

    def _shutdown(self) -> None:
        self._fail_all("the model was unloaded", status=503, code="model_unloaded")
        # Requests still in the command queue were never started: they get their terminal event too.
        while True:
            try:
                cmd, arg = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd == "submit":
                request_id, _m, _p, events, loop = arg
                self._emit(None, loop, events, Failed(request_id, "the model was unloaded", "model_unloaded", 503))
        self._gen.close()

    def _fail_all(self, message: str, *, status: int = 502, code: str = "provider_error") -> None:
        for uid in list(getattr(self, "_active", {})):
            act = self._active[uid]
            self._emit(act, self._loops[uid], act.events, Failed(act.request_id, message, code, status))
            self._forget(uid)

    def _handle(self, cmd: str, arg: Any) -> None:
        if cmd == "submit":
            self._insert(*arg)
        elif cmd == "cancel":
            uid = self._by_request.get(arg)
            if uid is not None:
                self._gen.remove([uid])
                self._finish(uid, "cancelled")

    def _insert(
        self,
        request_id: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        events: asyncio.Queue[EngineEvent],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._waiting -= 1
        self._waiting_tokens -= params.max_tokens
        continuing = True  # the answer goes on from the prompt's text rather than opening a turn of its own
        try:
            if params.raw_prompt is not None:  # legacy completions: the prompt as given, no chat template
                prompt = self._tok.encode(params.raw_prompt)
            else:
                tools = json.loads(params.tools) if params.tools else None
                continuing = params.continue_final and bool(messages) and messages[-1].role == "assistant"
                if continuing:  # prefill: go on from it
                    prompt = self._tok.apply_chat_template(
                        template_messages(messages), tools=tools, add_generation_prompt=False, continue_final_message=True
                    )
                else:
                    prompt = self._tok.apply_chat_template(template_messages(messages), tools=tools, add_generation_prompt=True)
        except Exception as exc:
            self._emit(None, loop, events, Failed(request_id, f"chat template failed: {exc}", "template_error", 400))
            return
        if not prompt:
            self._emit(None, loop, events, Failed(request_id, "the prompt is empty", "invalid_prompt", 400))
            return
        if params.count_only:  # count_tokens: the prompt as the model would see it, and nothing generated
            self._emit(None, loop, events, Finished(request_id, Usage(prompt_tokens=len(prompt), completion_tokens=0), "stop"))
            return
        if len(prompt) + params.max_tokens > self.context_length:
            msg = (
                f"prompt of {len(prompt)} tokens plus max_tokens {params.max_tokens} exceeds "
                f"the model's context length of {self.context_length} tokens"
            )
            self._emit(None, loop, events, Failed(request_id, msg, "context_length_exceeded", 400))
            return
        from mlx_lm.sample_utils import make_frequency_penalty, make_presence_penalty, make_sampler

        processors = [make_presence_penalty(params.presence_penalty)] if params.presence_penalty else []
        processors += [make_frequency_penalty(params.frequency_penalty)] if params.frequency_penalty else []
        constraint = None
        try:
            constraint = self._constraint(params)
        except Exception as exc:
            if params.tool_required:
                failed = Failed(request_id, f"tool_choice: cannot force a call here: {exc}", "invalid_tool_choice", 400)
            else:
                msg = f"response_format: cannot constrain the answer to this schema: {exc}"
                failed = Failed(request_id, msg, "invalid_json_schema", 400)
            self._emit(None, loop, events, failed)
            return
        if constraint is not None:
            processors.append(constraint)  # last: the penalties must not lift a masked token back

        if params.temperature <= 0:
            sampler = None
        elif params.seed is not None:
            sampler = _seeded_sampler(params.temperature, params.top_p, params.seed)
        else:
            sampler = make_sampler(temp=params.temperature, top_p=params.top_p if params.top_p < 1 else 0.0)
        cache, rest = self._cached_prefix(prompt)
        try:
            if cache is None:
                (uid,) = self._gen.insert(
                    [prompt], max_tokens=[params.max_tokens], samplers=[sampler], logits_processors=[processors]
                )
            else:
                (uid,) = self._gen.insert(
                    [rest], max_tokens=[params.max_tokens], caches=[cache],
                    all_tokens=[prompt[: len(prompt) - len(rest)]], samplers=[sampler], logits_processors=[processors],
                )
        except Exception as exc:
            self._emit(None, loop, events, Failed(request_id, f"could not start generation: {exc}"))
            return
        self._active[uid] = _Active(
            request_id=request_id,
            uid=uid,
            events=events,
            detok=_continuing(self._tok.detokenizer, prompt) if continuing else self._tok.detokenizer,
            stops=StopMatcher(params.stop),
            prompt_tokens=len(prompt),
            tools=self._tool_extractor(params),
            one_call=not params.parallel_tool_calls,
            constraint=constraint,
            top_logprobs=params.top_logprobs,
            reserved_tokens=len(prompt) + params.max_tokens,
            cached_tokens=len(prompt) - len(rest),
        )
        self._loops[uid] = loop
        self._by_request[request_id] = uid

    def _constraint(self, params: SamplingParams) -> GrammarConstraint | None:
        """The grammar a request's answer must keep to: its forced tool calls, or its JSON; else none."""
        forced = params.tool_required and params.tools
        if not forced and params.response_format not in ("json_object", "json_schema"):
            return None
        if self._grammar_tok is None:
            raise ValueError("this node cannot constrain this model's answers (no llguidance, or no tokenizer.json)")
        size = len(params.tools or "") if forced else len(params.json_schema or "")
        if size > MAX_SCHEMA_CHARS:  # compiling happens here, between decode steps: keep it short
            raise ValueError(f"{size} characters of JSON to compile, at most {MAX_SCHEMA_CHARS}")
        if forced:
            tools = json.loads(params.tools or "[]")
            grammar = tool_call_grammar(self._tok, self._grammar_tok, tools, params.tool_name, params.parallel_tool_calls)
        else:
            schema = params.json_schema if params.response_format == "json_schema" and params.json_schema else JSON_OBJECT_SCHEMA
            grammar = json_grammar(schema)
        return GrammarConstraint(self._grammar_tok, self._matchers.matcher(grammar))

    def _cached_prefix(self, prompt: list[int]) -> tuple[Any, list[int]]:
        """A copy of the longest cached KV prefix of ``prompt`` and the tokens still to prefill."""
        if self._prompt_cache is None:
            return None, prompt
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        cache, rest = self._prompt_cache.fetch_nearest_cache(self.model_id, prompt)
        if cache is not None and not rest:
            # An exact hit still needs one token to prefill: it yields the first logits.
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return (cache, rest) if cache is not None else (None, prompt)

    def _prefill_counters(self) -> tuple[int, float]:
        # BatchGenerator counts the prompt tokens it processed and the time it took; read the deltas.
        c = getattr(self._gen, "_counters", None)
        return (int(getattr(c, "prompt_tokens", 0)), float(getattr(c, "prompt_time", 0.0))) if c is not None else (0, 0.0)

    def _step(self) -> None:
        t0 = time.perf_counter()
        p_tokens0, p_time0 = self._prefill_counters()
        try:
            _prompt_resps, gen_resps = self._gen.next()
        except Exception as exc:  # a broken step fails every running request, not the node
            log.exception("decode step failed")
            for uid in list(self._active):
                act = self._active[uid]
                self._emit(act, self._loops[uid], act.events, Failed(act.request_id, f"engine step failed: {exc}"))
                self._forget(uid)
            return
        dt = time.perf_counter() - t0
        if gen_resps and dt > 0:
            tps = len(gen_resps) / dt
            self._decode_tps = tps if not self._decode_tps else 0.8 * self._decode_tps + 0.2 * tps
        p_tokens1, p_time1 = self._prefill_counters()
        if p_tokens1 > p_tokens0 and p_time1 > p_time0:
            tps = (p_tokens1 - p_tokens0) / (p_time1 - p_time0)
            self._prefill_tps = tps if not self._prefill_tps else 0.8 * self._prefill_tps + 0.2 * tps
        logprobs = self._logprobs(gen_resps)
        for r in gen_resps:
            act = self._active.get(r.uid)
            if act is None:
                continue
            act.generated += 1
            act.unsent_tokens += 1
            if r.finish_reason != "stop" and r.token not in self._hidden:
                act.detok.add_token(r.token)
                if r.uid in logprobs:
                    act.logprobs.append(logprobs[r.uid])
            text, hit_stop = act.stops.feed(act.detok.last_segment)
            self._emit_text(act, text)
            if hit_stop or (act.one_call and act.tools is not None and act.tools.made_call):
                # A stop string, or the one tool call asked for: decoding more would only be thrown away.
                self._gen.remove([r.uid])
                self._finish(r.uid, "stop", flush=False)
            elif r.finish_reason is not None:
                if self._prompt_cache is not None and getattr(r, "prompt_cache", None) is not None:
                    self._prompt_cache.insert_cache(self.model_id, list(r.all_tokens), r.prompt_cache)
                self._finish(r.uid, "length" if r.finish_reason == "length" else "stop")

    def _finish(self, uid: int, reason: str, flush: bool = True) -> None:
        act = self._active[uid]
        loop = self._loops[uid]
        if flush and reason != "cancelled":
            act.detok.finalize()
            tail, _ = act.stops.feed(act.detok.last_segment)
            self._emit_text(act, tail + act.stops.flush(), final=True)
        # Tokens that produced no text (EOS, a stop string) still count: deltas sum to usage.
        if act.unsent_tokens or act.logprobs:
            self._emit(act, loop, act.events, TextDelta(act.request_id, "", act.unsent_tokens, (), tuple(act.logprobs)))
            act.unsent_tokens = 0
            act.logprobs.clear()
        if reason == "stop" and act.tools is not None and act.tools.made_call:
            reason = "tool_calls"
        if act.constraint is not None and act.constraint.error and reason != "cancelled":
            # Never let an answer that left its grammar (a JSON schema, a forced call) pass as a finished one.
            failed = Failed(act.request_id, f"the answer left its grammar: {act.constraint.error}")
            self._emit(act, loop, act.events, failed)
            self._forget(uid)
            return
        usage = Usage(prompt_tokens=act.prompt_tokens, completion_tokens=act.generated, cached_tokens=act.cached_tokens)
        self._emit(act, loop, act.events, Finished(act.request_id, usage, reason, act.stops.matched))  # type: ignore[arg-type]
        self._forget(uid)

    def _tool_extractor(self, params: SamplingParams) -> ToolCallExtractor | None:
        if not params.tools or not self._tok.has_tool_calling or self._tok.tool_parser is None:
            return None
        return ToolCallExtractor(
            self._tok.tool_call_start, self._tok.tool_call_end, self._tok.tool_parser, json.loads(params.tools)
        )

    def _emit_text(self, act: _Active, text: str, final: bool = False) -> None:
        """Send generated text (tool calls lifted out of it), with the tokens not yet reported."""
        calls: list[ToolCall] = []
        if act.tools is not None:
            text, calls = act.tools.feed(text)
            if final:
                rest, more = act.tools.flush()
                text, calls = text + rest, calls + more
        if text or calls:
            delta = TextDelta(act.request_id, text, act.unsent_tokens, tuple(calls), tuple(act.logprobs))
            self._emit(act, self._loops[act.uid], act.events, delta)
            act.unsent_tokens = 0
            act.logprobs.clear()

    def _logprobs(self, resps: list[Any]) -> dict[int, TokenLogprob]:
        """Each sampled token's log probability and likeliest alternatives, for the requests that asked.

        One pass over the batch (stacked distributions, one ``argpartition``,
        one transfer) rather than one per sequence: each is a device sync.
        """
        asked = [
            (r, act.top_logprobs) for r in resps
            if (act := self._active.get(r.uid)) is not None and act.top_logprobs is not None and r.token not in self._hidden
        ]  # fmt: skip
        if not asked:
            return {}
        mx = self._mx
        dist = mx.stack([r.logprobs for r, _ in asked])
        chosen = dist[mx.arange(len(asked)), mx.array([r.token for r, _ in asked])].tolist()
        k = max(want for _, want in asked)
        ids = vals = [[] for _ in asked]
        if k:
            top_ids = mx.argpartition(-dist, kth=k - 1, axis=-1)[:, :k]
            ids, vals = top_ids.tolist(), mx.take_along_axis(dist, top_ids, axis=-1).tolist()
        out = {}
        for (r, want), logprob, i, v in zip(asked, chosen, ids, vals):
            pairs = sorted(zip(i, v), key=lambda p: -p[1])[:want]
            top = tuple(TopLogprob(*self._token_logprob(t, lp)) for t, lp in pairs)
            out[r.uid] = TokenLogprob(*self._token_logprob(r.token, logprob), top)
        return out

    def _token_logprob(self, token: int, logprob: float) -> tuple[str, float, str]:
        """``token``'s text, ``logprob`` as reported, and its bytes in hex when they are not whole UTF-8."""
        text = self._token_texts.get(token)
        if text is None:
            raw = (
                bytes(self._grammar_tok.decode_bytes([token]))
                if self._grammar_tok is not None
                else str(self._tok.decode([token])).encode()
            )
            try:
                text = (raw.decode("utf-8"), "")
            except UnicodeDecodeError:  # part of a character: the text shows a replacement, the bytes are exact
                text = (raw.decode("utf-8", "replace"), raw.hex())
            self._token_texts[token] = text
        # A token the constraint ruled out has probability 0: -9999, as OpenAI reports it (JSON has no -inf).
        return text[0], max(float(logprob), -9999.0), text[1]

    def _forget(self, uid: int) -> None:
        act = self._active.pop(uid)
        self._loops.pop(uid, None)
        self._by_request.pop(act.request_id, None)
