"""Long-lived processes: uvloop where it is installed, a calmer garbage collector, background tasks held until they end.

The coordinator gets uvloop from uvicorn; the node and ``darkbloom up`` use
``run``. uvloop's loop spends less time, holding the GIL, per relayed token,
which the node's MLX thread then has for building its next step. All three
call ``tune_gc``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_held: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], on_done: Callable[[asyncio.Task[T]], object] | None = None) -> asyncio.Task[T]:
    """Run ``coro`` as a task held until it ends (the event loop keeps only a weak reference to it)."""
    task = asyncio.get_running_loop().create_task(coro)
    _held.add(task)
    task.add_done_callback(_held.discard)
    if on_done is not None:
        task.add_done_callback(on_done)
    return task


def tune_gc() -> None:
    """Collect garbage less often, and never rescan what was built at start-up.

    Every request allocates hundreds of short-lived containers; at the
    default gen-0 threshold (700) the collector ran several times in a burst
    of requests, and each full pass scanned every object in the process (the
    coordinator's worst TTFT outliers in ``bench.relay``). ``freeze`` moves
    the start-up objects (modules, the app, its routes) out of the
    collector's view; the thresholds make young passes rarer and a full
    pass come about every 8 million allocations. Cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(main: Coroutine[Any, Any, T]) -> T:
    tune_gc()
    try:
        import uvloop
    except ImportError:  # Windows, or a trimmed install: the standard loop works the same
        return asyncio.run(main)
    return uvloop.run(main)
