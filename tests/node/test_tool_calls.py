"""Tool-call extraction from streamed text: the node side of tool calling."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from mlx_lm.tool_parsers import json_tools

from darkbloom.node.engine.tools import ToolCallExtractor


def _extractor() -> ToolCallExtractor:
    return ToolCallExtractor(json_tools.tool_call_start, json_tools.tool_call_end, json_tools.parse_tool_call)


TEXT = 'Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call> done'


def _run(pieces: list[str]) -> tuple[str, list]:  # type: ignore[type-arg]
    ex = _extractor()
    text, calls = [], []
    for piece in pieces:
        t, c = ex.feed(piece)
        text.append(t)
        calls.extend(c)
    t, c = ex.flush()
    return "".join(text) + t, calls + c


def test_a_call_is_lifted_out_of_the_text() -> None:
    text, calls = _run([TEXT])
    assert text == "Checking.  done"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


@given(st.lists(st.integers(min_value=0, max_value=len(TEXT)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_result(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [TEXT[a:b] for a, b in zip([0, *points], [*points, len(TEXT)], strict=True)]
    text, calls = _run(pieces)
    assert text == "Checking.  done"
    assert [c.name for c in calls] == ["get_weather"]


def test_a_marker_is_never_streamed_as_content() -> None:
    ex = _extractor()
    streamed = ""
    for ch in TEXT:
        streamed += ex.feed(ch)[0]
        assert "<tool" not in streamed


def test_text_that_only_looks_like_a_marker_start_is_released() -> None:
    text, calls = _run(["a <to", "ol> b"])
    assert (text, calls) == ("a <tool> b", [])


def test_a_call_cut_off_by_max_tokens_comes_back_as_text() -> None:
    text, calls = _run(['hi <tool_call>{"name": "f", "argu'])
    assert calls == [] and text == 'hi <tool_call>{"name": "f", "argu'


def test_garbage_inside_markers_stays_text() -> None:
    ex = _extractor()
    assert ex.feed("<tool_call>not json</tool_call>!") == ("<tool_call>not json</tool_call>!", [])
    assert not ex.made_call


PIECES = TEXT.partition(" done")[0].split(" ")


def test_engine_lifts_a_tool_call_out_of_generated_text(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """The engine's text path with tools on: markup in, a ToolCall and finish_reason tool_calls out."""
    import asyncio

    from darkbloom.node.engine.base import Finished, TextDelta
    from darkbloom.node.engine.mlx_engine import MLXEngine, _Active
    from darkbloom.node.engine.stops import StopMatcher
    from darkbloom.protocol import SamplingParams

    engine = MLXEngine(tiny_model_dir, "tiny", max_concurrency=2)
    engine.wait_ready(60)
    try:
        assert engine._tok.has_tool_calling

        async def run() -> list:  # type: ignore[type-arg]
            events: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
            loop = asyncio.get_running_loop()
            params = SamplingParams(tools=json.dumps([{"type": "function", "function": {"name": "get_weather"}}]))
            act = _Active("r1", 99, events, None, StopMatcher(()), 5, tools=engine._tool_extractor(params))
            engine._active[99], engine._loops[99] = act, loop
            for piece in PIECES:  # as decode steps would deliver it
                act.generated += 1
                act.unsent_tokens += 1
                engine._emit_text(act, piece + " ")
            engine._finish(99, "stop", flush=False)
            await asyncio.sleep(0.05)
            return [events.get_nowait() for _ in range(events.qsize())]

        evs = asyncio.run(run())
    finally:
        engine.close()
    deltas = [e for e in evs if isinstance(e, TextDelta)]
    calls = [c for d in deltas for c in d.tool_calls]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert "".join(d.text for d in deltas).strip() == "Checking."
    assert sum(d.tokens for d in deltas) == len(PIECES)
    (done,) = [e for e in evs if isinstance(e, Finished)]
    assert done.finish_reason == "tool_calls" and done.usage.completion_tokens == len(PIECES)


class _ScriptedGenerator:
    """Stands in for mlx-lm's BatchGenerator: every request "decodes" the same scripted tokens, one per step."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.running: dict[int, int] = {}  # uid -> tokens given so far
        self.max_tokens: dict[int, int] = {}
        self._uids = iter(range(1000, 10**6))

    def insert(self, prompts, max_tokens, **_: object) -> list[int]:  # type: ignore[no-untyped-def]
        uids = []
        for limit in max_tokens:
            uid = next(self._uids)
            self.running[uid], self.max_tokens[uid] = 0, limit
            uids.append(uid)
        return uids

    def next(self):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        out = []
        for uid, sent in list(self.running.items()):
            self.running[uid] = sent + 1
            done = sent + 1 >= min(len(self.tokens), self.max_tokens[uid])
            out.append(SimpleNamespace(uid=uid, token=self.tokens[sent], finish_reason="length" if done else None))
            if done:
                del self.running[uid]
        return [], out

    def remove(self, uids: list[int]) -> None:
        for uid in uids:
            self.running.pop(uid, None)

    def close(self) -> None:
        pass


def test_with_parallel_tool_calls_off_the_engine_stops_after_the_first_call(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """The node ends the answer at its first call rather than decoding more calls the coordinator would drop."""
    import asyncio

    from darkbloom.node.engine.base import Finished, TextDelta
    from darkbloom.node.engine.mlx_engine import MLXEngine
    from darkbloom.protocol import ChatMessage, SamplingParams

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    script = "Checking. " + call % "Paris" + call % "Oslo" + " and more text after the calls"
    engine = MLXEngine(tiny_model_dir, "tiny", max_concurrency=2)
    engine.wait_ready(60)
    try:
        tokens = engine._tok.encode(script, add_special_tokens=False)
        engine._gen.close()
        engine._gen = _ScriptedGenerator(tokens)
        tools = json.dumps([{"type": "function", "function": {"name": "get_weather"}}])

        async def answer(parallel: bool) -> tuple[list[TextDelta], Finished]:
            events: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
            params = SamplingParams(max_tokens=500, temperature=0.0, tools=tools, parallel_tool_calls=parallel)
            engine.submit(f"r-{parallel}", (ChatMessage(role="user", content="weather?"),), params, events)
            deltas = []
            while True:
                ev = await asyncio.wait_for(events.get(), 20)
                if isinstance(ev, TextDelta):
                    deltas.append(ev)
                else:
                    assert isinstance(ev, Finished), ev
                    return deltas, ev

        every, all_done = asyncio.run(answer(True))
        first, first_done = asyncio.run(answer(False))
    finally:
        engine.close()
    assert [json.loads(c.arguments)["city"] for d in every for c in d.tool_calls] == ["Paris", "Oslo"]
    assert all_done.usage.completion_tokens == len(tokens)
    assert [json.loads(c.arguments)["city"] for d in first for c in d.tool_calls] == ["Paris"]
    assert first_done.finish_reason == "tool_calls"
    # Stopped right there: fewer tokens decoded (and counted) than the whole script.
    assert first_done.usage.completion_tokens == sum(d.tokens for d in first) < len(tokens)
