"""Constrained decoding: a logits processor that keeps an answer inside a grammar.

Two grammars: a JSON schema (``response_format``; see
``darkbloom.protocol.structured``) and the model's own tool-call format with
the request's tools (a forced ``tool_choice``). llguidance walks the grammar
token by token and gives, for each step, the set of tokens that keep the
text a prefix of a valid answer; every other token's logit becomes -inf
before the sampler sees it. Once the answer is complete only the
end-of-sequence tokens are left, so it stops there.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from darkbloom.protocol.structured import JSON_OPTIONS

FORCEABLE_FORMATS = ("json_tools",)
"""mlx-lm tool-call formats a call can be forced in: ``<tool_call>{"name", "arguments"}</tool_call>``."""

log = logging.getLogger(__name__)


def can_constrain(model_dir: Path) -> bool:
    """Whether answers of the model in ``model_dir`` can be constrained: llguidance and a fast tokenizer."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return (model_dir / "tokenizer.json").is_file()


def grammar_tokenizer(tok: Any) -> Any:
    """llguidance's view of an mlx-lm tokenizer, ending on any of its end-of-sequence tokens.

    Build once per model: it walks the whole vocabulary.
    """
    import llguidance.hf

    eos = sorted(getattr(tok, "eos_token_ids", None) or {tok.eos_token_id})
    return llguidance.hf.from_tokenizer(tok._tokenizer, eos_token=eos)


def tool_format(tok: Any) -> str:
    """The name of mlx-lm's tool-call parser for ``tok`` (``json_tools``, ``mistral``...), or ""."""
    parser = getattr(tok, "tool_parser", None)
    return str(getattr(parser, "__module__", "")).rpartition(".")[2] if parser is not None else ""


def tool_call_grammar(tok: Any, grammar_tok: Any, tools: list[dict[str, Any]], name: str | None, many: bool) -> str:
    """A grammar for an answer that is tool calls and nothing else, in the model's ``json_tools`` format.

    Each call is ``<tool_call>{"name": N, "arguments": A}</tool_call>`` where
    N names one of ``tools`` (only ``name`` when given) and A matches that
    tool's ``parameters``. ``many``: one call or more (parallel calls), else
    exactly one. A marker the tokenizer holds as one special token is
    matched as that token.

    Raises:
        ValueError: the format is not one calls can be forced in, or ``name`` is not among ``tools``.
    """
    if tool_format(tok) not in FORCEABLE_FORMATS:
        raise ValueError(f"this model's tool-call format ({tool_format(tok) or 'none'}) cannot be forced")
    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise ValueError(f"no tool named {name!r} among the request's tools")
    calls: list[dict[str, Any]] = []
    defs: dict[str, dict[str, Any]] = {"$defs": {}, "definitions": {}}
    for f in functions:
        params = dict(f.get("parameters") or {"type": "object"})
        # ``$ref``s point at the root (``#/$defs/X``): the parameters' own definitions move to the root.
        for where, known in defs.items():
            for key, schema in (params.pop(where, None) or {}).items():
                if known.setdefault(key, schema) != schema:
                    raise ValueError(f"two tools define {key!r} differently in their {where}")
        calls.append({
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })  # fmt: skip
    body = {**({"anyOf": calls} if len(calls) > 1 else calls[0]), "x-guidance": JSON_OPTIONS}
    body.update({where: known for where, known in defs.items() if known})
    start, end = _marker(tok, grammar_tok, tok.tool_call_start), _marker(tok, grammar_tok, tok.tool_call_end)
    return "\n".join([
        f"start: call{'+' if many else ''}",
        f"call: {start} WS? body WS? {end} WS?",
        f"body: %json {json.dumps(body)}",
        r"WS: /[ \n]{1,2}/",
    ])  # fmt: skip


def _marker(tok: Any, grammar_tok: Any, text: str) -> str:
    """A marker as a grammar terminal: its special token where it is one, else its text."""
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) == 1 and grammar_tok.is_special_token(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


class MatcherCache:
    """Compiled grammars by their text, the ``size`` most recently used kept.

    Compiling takes 0.8-8 ms on a 49,152-token vocabulary (a two-field
    schema to a 25 KB one, measured) and happens on the engine thread,
    between decode steps; an app sends the same schema again and again, and
    a copy of a compiled matcher takes microseconds.
    """

    def __init__(self, tokenizer: Any, size: int = 32) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self.compiled = 0
        self._items: OrderedDict[str, Any] = OrderedDict()

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for ``grammar``.

        Raises:
            ValueError: the grammar does not compile (the message says why; nothing is kept).
        """
        from llguidance import LLMatcher

        pristine = self._items.get(grammar)
        if pristine is None:
            pristine = LLMatcher(self.tokenizer, grammar)
            self.compiled += 1
            if pristine.is_error():
                raise ValueError(pristine.get_error())
            self._items[grammar] = pristine
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(grammar)
        return pristine.deep_copy()


class GrammarConstraint:
    """An mlx-lm logits processor: ``(tokens so far, logits) -> logits`` with disallowed tokens at -inf.

    Args:
        tokenizer: From ``grammar_tokenizer``.
        matcher: A fresh llguidance matcher for the answer's grammar (``MatcherCache.matcher``).
    """

    def __init__(self, tokenizer: Any, matcher: Any) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self._vocab = tokenizer.vocab_size
        self._eos = tokenizer.eos_token
        self._bits = allocate_token_bitmask(1, self._vocab)
        self._started = False
        self.error = ""

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx
        import numpy as np
        from llguidance.numpy import fill_next_token_bitmask

        if self._started:  # every call after the first brings the token sampled last
            token = int(tokens[-1].item())
            if not self.matcher.is_stopped() and not self.matcher.consume_token(token) and not self.error:
                self.error = self.matcher.get_error() or f"token {token} left the grammar"
                log.warning("constrained decoding failed: %s", self.error)
        self._started = True
        if self.error:
            allowed = np.zeros(self._vocab, dtype=bool)
            allowed[self._eos] = True  # end the answer rather than go on unconstrained
        else:
            fill_next_token_bitmask(self.matcher, self._bits)
            allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab].astype(bool)
        width = logits.shape[-1]
        if width > self._vocab:  # padded embedding rows: never a real token
            allowed = np.concatenate([allowed, np.zeros(width - self._vocab, dtype=bool)])
        return mx.where(mx.array(allowed[:width]), logits, mx.array(-mx.inf, dtype=logits.dtype))
