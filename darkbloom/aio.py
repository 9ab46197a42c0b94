"""Run a long-lived process's event loop on uvloop where it is installed (asyncio otherwise).

The coordinator gets uvloop from uvicorn; the node and ``darkbloom up`` use
this. uvloop's loop spends less time, holding the GIL, per relayed token,
which the node's MLX thread then has for building its next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows, or a trimmed install: the standard loop works the same
        return asyncio.run(main)
    return uvloop.run(main)
