"""The node's one way out to the coordinator: frames sent in one turn go as one message.

A batched engine wakes every running request's task on each decode step;
each sends its ``chunk``. Sending each alone costs a WebSocket message, a
system call and a parse on both sides per token. ``FrameSender`` queues the
frames and writes them from one task that runs once the turn's other tasks
have had their go: what they sent meanwhile leaves together as one message
(``protocol.join``: a JSON array of frames, at most ``MAX_BATCH_BYTES``),
in the order sent. A frame sent alone goes as itself, so registration and a
quiet node's traffic look exactly as before; until the coordinator says it
reads batches (``Registered.frame_batches``) every frame goes alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from darkbloom.protocol import MAX_BATCH_BYTES, Frame, encode, join


class FrameSender:
    """Coalesces frames into messages for ``write``; ``send`` returns once its frame is written.

    Args:
        write: Sends one WebSocket message (text).
        batch: The peer reads batches; otherwise each frame is its own message.
    """

    def __init__(self, write: Callable[[bytes], Awaitable[None]], *, batch: bool = False) -> None:
        self._write = write
        self.batch = batch
        self._queue: list[bytes] = []
        self._written: asyncio.Future[None] | None = None  # resolved when the frames queued now are out
        self._task: asyncio.Task[None] | None = None

    async def send(self, frame: Frame) -> None:
        """Queue ``frame`` and wait until the message carrying it is written.

        Raises:
            Whatever the write raised (the connection is gone): to every
            sender whose frame was in that message.
        """
        self._queue.append(encode(frame))
        written = self._written
        if written is None:
            loop = asyncio.get_running_loop()
            written = self._written = loop.create_future()
            if self._task is None:
                self._task = loop.create_task(self._drain())
        # Shielded: a sender cancelled while waiting must not cancel the others' message.
        await asyncio.shield(written)

    async def _drain(self) -> None:
        try:
            while self._queue:
                queued, self._queue = self._queue, []
                written, self._written = self._written, None
                assert written is not None
                try:
                    for part in _split(queued) if self.batch else ([f] for f in queued):
                        await self._write(join(part))
                except BaseException as exc:
                    written.set_exception(exc if isinstance(exc, Exception) else ConnectionError("sender stopped"))
                    written.exception()  # marked retrieved: a sender cancelled meanwhile never will
                    if not isinstance(exc, Exception):
                        raise
                    return
                written.set_result(None)
        finally:
            self._task = None


def _split(frames: list[bytes]) -> list[list[bytes]]:
    """Consecutive runs of frames of at most ``MAX_BATCH_BYTES`` each (a larger frame alone)."""
    parts: list[list[bytes]] = [[]]
    size = 0
    for f in frames:
        if parts[-1] and size + len(f) > MAX_BATCH_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(f)
        size += len(f) + 1
    return parts
