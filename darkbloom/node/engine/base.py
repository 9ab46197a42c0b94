"""The inference engine interface the node's WebSocket session drives.

An engine owns its model on its own thread; the event loop submits requests
and receives ``EngineEvent``s on an asyncio queue, never blocking on MLX.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from darkbloom.protocol import ChatMessage, SamplingParams, SlotCapacity, TokenLogprob, ToolCall, Usage


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Generated text for one request; ``tokens`` is how many tokens produced it."""

    request_id: str
    text: str
    tokens: int
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    """With ``top_logprobs`` asked for: the generated tokens this delta reports, in order."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The request's terminal success event, with exact usage."""

    request_id: str
    usage: Usage
    finish_reason: Literal["stop", "length", "cancelled", "tool_calls"]
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The request's terminal failure event."""

    request_id: str
    message: str
    code: str = "provider_error"
    status: int = 502


EngineEvent = TextDelta | Finished | Failed


class Engine(Protocol):
    """What a node needs from an inference engine."""

    model_id: str

    def submit(
        self,
        request_id: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        events: asyncio.Queue[EngineEvent],
    ) -> None:
        """Queue a request; its events arrive on ``events`` in order, ending in one terminal event."""

    def cancel(self, request_id: str) -> None:
        """Stop a request within one decode step; it ends with ``Finished(cancelled)``."""

    def capacity(self) -> SlotCapacity:
        """A snapshot of this slot's load."""

    def close(self) -> None:
        """Stop the engine thread and free the model."""
