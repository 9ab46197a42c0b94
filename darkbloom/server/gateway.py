"""The request path every consumer API shares, from admission to settlement.

Each public API (chat completions, and later completions, responses,
messages) is an adapter: it parses its own body into one ``InferenceJob``,
calls ``start``, and formats the ``Relay``'s frames in its own wire shape.
Everything between (admission hooks such as billing holds and rate limits,
routing, dispatch, the wait for the first frame, cancel on disconnect, and
exactly one terminal settlement) happens here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import anyio

from darkbloom.logging_setup import set_request_id
from darkbloom.protocol import ChatMessage, Chunk, Complete, Error, Frame, SamplingParams, Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.errors import model_not_found, model_unavailable
from darkbloom.server.fleet import Fleet, InFlight, NoNodeError
from darkbloom.server.settings import Settings

log = logging.getLogger(__name__)

Outcome = Literal["completed", "failed", "cancelled"]


@dataclass(frozen=True)
class InferenceJob:
    """One consumer request in the coordinator's own terms, whatever API it came from."""

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    account_id: str
    api: str = "chat.completions"
    stream: bool = False


@dataclass
class Timing:
    """Monotonic stage stamps (``time.perf_counter``) for the ``X-Timing`` header."""

    received: float = field(default_factory=time.perf_counter)
    authed: float = 0.0
    parsed: float = 0.0
    admitted: float = 0.0
    routed: float = 0.0
    dispatched: float = 0.0
    first_frame: float = 0.0
    finished: float = 0.0


class RequestHook(Protocol):
    """Something that takes part in every request (billing, rate limits, metrics).

    ``admit`` runs before any node sees the request and may refuse it by
    raising ``RequestError``; ``settle`` runs exactly once per admitted job,
    after its terminal state, with the usage the node reported (if any).
    """

    async def admit(self, job: InferenceJob) -> None: ...

    async def settle(self, job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None: ...


@runtime_checkable
class StreamTap(Protocol):
    """A hook that also watches the stream (metrics). Called on the relay's hot path: keep it cheap.

    ``first_frame`` runs once, when the first frame arrives (``timing`` then
    has ``received``, ``admitted``, ``dispatched`` and ``first_frame``);
    ``chunk`` runs for every later chunk with the seconds since the previous
    frame and the chunk's payload length (text, or base64 when sealed: no
    encoding pass on the hot path, so non-ASCII text counts characters).
    """

    def first_frame(self, job: InferenceJob, timing: Timing, frame: Frame) -> None: ...

    def chunk(self, job: InferenceJob, gap_s: float, nbytes: int) -> None: ...


def frame_error(frame: Error) -> RequestError:
    """An ``error`` frame from a node as a consumer-facing error."""
    kind = "invalid_request_error" if 400 <= frame.status < 500 else "server_error"
    return RequestError(frame.status, frame.message, type=kind, code=frame.code)


class Relay:
    """A dispatched request: its frames in order, and exactly one ending."""

    def __init__(self, job: InferenceJob, flight: InFlight, fleet: Fleet, hooks: list[RequestHook], settings: Settings, timing: Timing) -> None:
        self.job = job
        self.flight = flight
        self.fleet = fleet
        self.hooks = hooks
        self.settings = settings
        self.timing = timing
        self.first: Frame | None = None
        self.terminal: Frame | None = None
        self._closed = False
        self._taps = [h for h in hooks if isinstance(h, StreamTap)]

    @property
    def node_id(self) -> str:
        return self.flight.node_id

    async def _next(self, timeout: float) -> Frame:
        try:
            return await asyncio.wait_for(self.flight.frames.get(), timeout)
        except asyncio.TimeoutError:
            return Error(
                message=f"no response from the provider within {timeout:.0f} s",
                code="timeout",
                status=504,
                request_id=self.job.request_id,  # type: ignore[arg-type]
            )

    async def wait_first(self) -> Frame:
        self.first = await self._next(self.settings.first_token_timeout_s)
        self.timing.first_frame = time.perf_counter()
        for tap in self._taps:
            tap.first_frame(self.job, self.timing, self.first)
        return self.first

    async def frames(self) -> AsyncIterator[Frame]:
        """Every frame from the first to the terminal one (``complete`` or ``error``)."""
        frame = self.first if self.first is not None else await self.wait_first()
        last = self.timing.first_frame
        while True:
            if isinstance(frame, (Complete, Error)):
                self.terminal = frame
                yield frame
                return
            yield frame
            frame = await self._next(self.settings.request_timeout_s)
            if self._taps and isinstance(frame, Chunk):
                now = time.perf_counter()
                nbytes = len(frame.text) + len(frame.sealed or "")
                for tap in self._taps:
                    tap.chunk(self.job, now - last, nbytes)
                last = now

    async def close(self) -> None:
        """End the request exactly once: release, or cancel it on the node, then settle.

        Safe to call from a cancelled scope (a client that went away): the
        cancel and the settlement are shielded so they always happen.
        """
        if self._closed:
            return
        self._closed = True
        self.timing.finished = time.perf_counter()
        with anyio.CancelScope(shield=True):
            term = self.terminal
            if term is None:
                await self.fleet.cancel(self.job.request_id, "client disconnected")
                await _settle(self.hooks, self.job, "cancelled", None, self.node_id)
            else:
                self.fleet.finish(self.job.request_id)
                if isinstance(term, Complete):
                    await _settle(self.hooks, self.job, "completed", term.usage, self.node_id)
                else:
                    await _settle(self.hooks, self.job, "failed", None, self.node_id)


async def _settle(hooks: list[RequestHook], job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None:
    for hook in hooks:
        try:
            await hook.settle(job, outcome, usage, node_id)
        except Exception:  # one hook's failure must not skip the others
            log.exception("settle hook %s failed for %s", type(hook).__name__, job.request_id)


async def start(job: InferenceJob, fleet: Fleet, hooks: list[RequestHook], settings: Settings, timing: Timing | None = None) -> Relay:
    """Admit, route and dispatch a job, and wait for its first frame.

    Returns:
        A relay whose first frame is a chunk or a ``complete``.

    Raises:
        RequestError: refused at admission, no node for the model, or the
            node failed before producing anything (the hold is settled).
    """
    timing = timing or Timing()
    set_request_id(job.request_id)  # every log line from here on (and the X-Request-Id header) carries it
    admitted: list[RequestHook] = []
    try:
        for hook in hooks:
            await hook.admit(job)
            admitted.append(hook)
    except BaseException:
        await _settle(admitted, job, "failed", None, None)
        raise
    timing.admitted = time.perf_counter()
    try:
        flight = await fleet.dispatch(job.request_id, job.model, job.messages, job.params)
    except NoNodeError as exc:
        await _settle(hooks, job, "failed", None, None)
        raise (model_unavailable(job.model) if exc.known else model_not_found(job.model)) from None
    except BaseException:
        await _settle(hooks, job, "failed", None, None)
        raise
    timing.dispatched = time.perf_counter()
    timing.routed = flight.dispatched_at
    relay = Relay(job, flight, fleet, hooks, settings, timing)
    try:
        first = await relay.wait_first()
    except BaseException:
        await relay.close()
        raise
    if isinstance(first, Error):
        relay.terminal = first
        await relay.close()
        raise frame_error(first)
    return relay


__all__ = ["Chunk", "Complete", "Error", "InferenceJob", "Outcome", "Relay", "RequestHook", "StreamTap", "Timing", "frame_error", "start"]
