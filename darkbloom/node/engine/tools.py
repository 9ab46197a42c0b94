"""Tool calls in a stream of generated text (pure: no MLX).

A tool-capable chat template makes the model wrap each call in markers
(``<tool_call>`` ... ``</tool_call>`` for the common JSON format; mlx-lm
knows the markers and a parser per model family). ``ToolCallExtractor``
splits the streamed text into plain text, which is streamed as usual, and
complete calls, which are parsed once their end marker arrives. Text that
could be the start of a marker is held back, so a marker is never streamed
as content.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from darkbloom.protocol import ToolCall

Parser = Callable[[str, Any], Any]


def _as_tool_calls(parsed: Any) -> list[ToolCall]:
    """mlx-lm parsers return ``{"name", "arguments"}`` (or a list of them); arguments may be a dict."""
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"tool call without a name: {item!r}")
        args = item.get("arguments", {})
        calls.append(
            ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}",
                name=item["name"],
                arguments=args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
            )
        )
    return calls


class ToolCallExtractor:
    """Separates tool calls from the text around them, across arbitrary delta boundaries.

    Args:
        start: The marker that opens a call.
        end: The marker that closes it.
        parse: Turns the text between the markers into ``{"name", "arguments"}``.
        tools: The request's tools, passed to ``parse`` (some formats need the schemas).
    """

    def __init__(self, start: str, end: str, parse: Parser, tools: Any = None) -> None:
        self._start = start
        self._end = end
        self._parse = parse
        self._tools = tools
        self._buf = ""
        self._inside = False
        self.made_call = False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Consume a delta; return the plain text that is safe to stream and any finished calls."""
        self._buf += text
        out: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if self._inside:
                idx = self._buf.find(self._end)
                if idx < 0:
                    break
                body, self._buf = self._buf[:idx], self._buf[idx + len(self._end) :]
                self._inside = False
                try:
                    calls.extend(self._call(body))
                except ValueError:  # not a call after all: the model's text, shown as it was written
                    out.append(self._start + body + self._end)
                continue
            idx = self._buf.find(self._start)
            if idx >= 0:
                out.append(self._buf[:idx])
                self._buf = self._buf[idx + len(self._start) :]
                self._inside = True
                continue
            keep = _partial_suffix(self._buf, self._start)
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return "".join(out), calls

    def flush(self) -> tuple[str, list[ToolCall]]:
        """At the end of generation: held-back text, and a call cut off by the token limit as text."""
        rest, self._buf = self._buf, ""
        if self._inside:
            self._inside = False
            try:
                return "", self._call(rest)
            except ValueError:
                return self._start + rest, []
        return rest, []

    def _call(self, body: str) -> list[ToolCall]:
        try:
            calls = _as_tool_calls(self._parse(body, self._tools))
        except Exception as exc:  # a malformed call is the model's output, not our crash
            raise ValueError(f"unparseable tool call: {exc}") from exc
        self.made_call = True
        return calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
