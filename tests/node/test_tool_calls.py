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
