"""``Wake``: ``asyncio.Event`` for the relay's per-chunk path, without its per-call loop lookups.

On CPython 3.11 every ``asyncio.get_running_loop()`` is a ``getpid()``
system call, and ``asyncio.Event.wait`` makes one per wait; the relay waits
once per streamed chunk. ``Wake`` looks the loop up once, on its first
wait, and otherwise behaves as ``asyncio.Event`` (``set``, ``clear``,
``is_set``, ``wait``; any number of waiters, each cancellable alone).
"""

from __future__ import annotations

import asyncio


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
