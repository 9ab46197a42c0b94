"""Per-chunk waiting without per-chunk overhead: ``Wake`` (an event) and ``Deadline`` (a timeout).

``Wake`` is ``asyncio.Event`` for the relay's per-chunk path, without its per-call loop lookups.

On CPython 3.11 every ``asyncio.get_running_loop()`` is a ``getpid()``
system call, and ``asyncio.Event.wait`` makes one per wait; the relay waits
once per streamed chunk. ``Wake`` looks the loop up once, on its first
wait, and otherwise behaves as ``asyncio.Event`` (``set``, ``clear``,
``is_set``, ``wait``; any number of waiters, each cancellable alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Wake:
    __slots__ = ("_flag", "_waiters", "loop")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[bool]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._flag = False

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this wake lives on, looked up once."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    async def wait(self) -> bool:
        if self._flag:
            return True
        fut = self.running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            self._waiters.remove(fut)

    async def wait_for(self, timeout: float) -> bool:
        """``wait``, for at most ``timeout`` seconds: ``True`` when set, ``False`` when the time ran out.

        One timer on the future rather than an ``asyncio.timeout`` scope (a
        third of the cost): each request waits like this for its first frame.
        """
        if self._flag:
            return True
        loop = self.running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(timeout, _time_up, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._waiters.remove(fut)


def _time_up(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Deadline:
    """A deadline that moves on every use, kept by one timer that is re-armed only when it fires early.

    The relay moves a flight's deadline once per streamed chunk, and a node's
    writer once per frame; arming a timer (or an ``asyncio.timeout``) each
    time cost more than the work it guarded. ``set`` only stores the new
    time (arming a timer when none is pending); when the timer fires before
    the current deadline it re-arms for it, and ``on_expiry`` runs once the
    deadline has truly passed with no ``clear`` in between.
    """

    __slots__ = ("_at", "_timer", "_on_expiry", "_loop")

    def __init__(self, on_expiry: Callable[[], object]) -> None:
        self._at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_expiry = on_expiry
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def armed(self) -> bool:
        """A deadline is set (and not yet cleared or expired)."""
        return self._at is not None

    def set(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Expire ``seconds`` from now, unless cleared or moved before then."""
        self._loop = loop
        self._at = loop.time() + seconds
        if self._timer is None:
            self._timer = loop.call_at(self._at, self._fire)

    def clear(self) -> None:
        """Nothing to watch now: a pending timer that fires just lapses."""
        self._at = None

    def cancel(self) -> None:
        """Clear, and drop the pending timer so nothing holds the owner until it would fire."""
        self._at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        at, loop = self._at, self._loop
        if at is None or loop is None:
            return
        if loop.time() < at:
            self._timer = loop.call_at(at, self._fire)
            return
        self._at = None
        self._on_expiry()
