"""One writer per node socket, with two lanes: control frames first, then data.

Control frames (cancel, attestation challenge, trust status, load/unload
model, connection-level errors) go out before any queued data frame
(inference requests); within a lane, frames keep their order. A cancel for a
request still queued removes it instead (neither goes out). A write in
progress is never pre-empted. For a node that reads batches (``Register.frame_batches``)
the writer sends everything queued when it wakes as one message, control
frames first, up to ``MAX_BATCH_BYTES``: a burst of requests reaches the
node in one write instead of one each. A write that takes too long (control 5 s; data
``bytes / 2 MiB/s`` clamped to 5-30 s, the original's numbers) means the
socket is stuck: the writer stops, and ``on_stuck`` drops the connection so
its requests fail cleanly instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from darkbloom.protocol import (
    AttestationChallenge,
    Cancel,
    MAX_BATCH_BYTES,
    Error,
    Frame,
    LoadModel,
    Registered,
    TrustStatus,
    UnloadModel,
    encode,
    join,
)

from darkbloom.server.wake import Deadline, Wake

log = logging.getLogger(__name__)

CONTROL_FRAMES = (Cancel, AttestationChallenge, TrustStatus, LoadModel, UnloadModel, Registered, Error)
"""Frames that take the control lane; everything else is data."""


@dataclass(frozen=True, slots=True)
class WriterLimits:
    control_queue: int = 64
    data_queue: int = 128
    control_timeout_s: float = 5.0
    data_bytes_per_s: float = 2 * 1024 * 1024
    data_min_timeout_s: float = 5.0
    data_max_timeout_s: float = 30.0

    def data_timeout(self, size: int) -> float:
        return max(self.data_min_timeout_s, min(self.data_max_timeout_s, size / self.data_bytes_per_s))


class WriterClosed(ConnectionError):
    """The node's writer has stopped (socket stuck or gone)."""


class NodeWriter:
    """The single writer task of one node socket.

    Args:
        send_bytes: Writes one WebSocket message.
        on_stuck: Called once with a reason when a write fails or exceeds its timeout.
        limits: Queue sizes and write timeouts.
        batch: The node reads batches: join what is queued into one message.
    """

    def __init__(
        self,
        send_bytes: Callable[[bytes], Awaitable[None]],
        on_stuck: Callable[[str], object] | None = None,
        limits: WriterLimits = WriterLimits(),
        batch: bool = False,
    ) -> None:
        self._send_bytes = send_bytes
        self.batch = batch
        self.on_stuck = on_stuck
        self.limits = limits
        self._control: deque[bytes] = deque()
        self._data: deque[bytes] = deque()
        self._data_ids: deque[str] = deque()  # the request id of each data frame, beside it
        self._ready = Wake()
        self._room = Wake()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._watchdog = Deadline(self._write_stuck)  # armed while a write is in progress
        self._write_timeout = 0.0
        self.closed = False
        self.reason = ""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def send(self, frame: Frame) -> None:
        """Queue a frame on its lane; waits while that lane is full.

        Raises:
            WriterClosed: the writer has stopped.
        """
        if isinstance(frame, Cancel) and frame.request_id and self._drop_queued(frame.request_id):
            return  # its request never left: the node need hear of neither
        data = encode(frame)
        control = isinstance(frame, CONTROL_FRAMES)
        lane, cap = (self._control, self.limits.control_queue) if control else (self._data, self.limits.data_queue)
        while len(lane) >= cap and not self.closed:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise WriterClosed(self.reason or "writer closed")
        lane.append(data)
        if not control:
            self._data_ids.append(getattr(frame, "request_id", None) or "")
        self._ready.set()
        if self._task is None:
            self.start()

    def _drop_queued(self, request_id: str) -> bool:
        """Take a request still waiting in the data lane out of it; False if it is not there.

        Without this a cancel, on the control lane, would overtake the very
        request it cancels and reach the node first; the node would then run
        a request nobody is waiting for.
        """
        try:
            i = self._data_ids.index(request_id)
        except ValueError:
            return False
        del self._data[i]
        del self._data_ids[i]
        self._room.set()
        return True

    def pending(self) -> tuple[int, int]:
        """Frames waiting in (control, data)."""
        return len(self._control), len(self._data)

    async def _run(self) -> None:
        lim = self.limits
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self._control and not self._data:
                    self._ready.clear()
                    await self._ready.wait()
                if self.batch:
                    data, timeout = self._take_batch()
                elif self._control:
                    data, timeout = self._control.popleft(), lim.control_timeout_s
                else:
                    data = self._data.popleft()
                    self._data_ids.popleft()
                    timeout = lim.data_timeout(len(data))
                self._room.set()
                # The watchdog: one timer, re-armed lazily, instead of a timeout context per write.
                self._write_timeout = timeout
                self._watchdog.set(loop, timeout)
                try:
                    await self._send_bytes(data)
                except Exception as exc:  # the socket went away under us
                    self._stop(f"write failed: {exc.__class__.__name__}")
                    return
                finally:
                    self._watchdog.clear()
        except asyncio.CancelledError:
            self._stop("writer closed")
            raise

    def _take_batch(self) -> tuple[bytes, float]:
        """Everything queued, control lane first, up to ``MAX_BATCH_BYTES`` (at least one frame), joined."""
        lim = self.limits
        parts: list[bytes] = []
        size = data_size = 0
        for lane in (self._control, self._data):
            while lane and (not parts or size + len(lane[0]) <= MAX_BATCH_BYTES):
                frame = lane.popleft()
                parts.append(frame)
                size += len(frame) + 1
                if lane is self._data:
                    self._data_ids.popleft()
                    data_size += len(frame)
        timeout = lim.control_timeout_s if not data_size else max(lim.control_timeout_s, lim.data_timeout(data_size))
        return join(parts), timeout

    def _write_stuck(self) -> None:
        """The write in progress is past its deadline: stop, and take the stuck write away from the task."""
        if self.closed:
            return
        self._stop(f"write stuck for over {self._write_timeout:.0f} s")
        if self._task is not None:
            self._task.cancel()

    def _stop(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self._control.clear()
        self._data.clear()
        self._data_ids.clear()
        self._room.set()
        if reason != "writer closed":
            log.warning("node writer stopped: %s", reason)
            if self.on_stuck is not None:
                self.on_stuck(reason)

    async def close(self) -> None:
        """Stop the writer task (queued frames are dropped: the socket is closing)."""
        task, self._task = self._task, None
        self._watchdog.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stop("writer closed")
