"""Long-lived processes: the event loop on uvloop where it is installed, and a calmer garbage collector.

The coordinator gets uvloop from uvicorn; the node and ``darkbloom up`` use
``run``. uvloop's loop spends less time, holding the GIL, per relayed token,
which the node's MLX thread then has for building its next step. All three
call ``tune_gc``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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
