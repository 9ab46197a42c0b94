"""Per-model request queues (depth 32, 120 s wait) and the Retry-After formula. Pure."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Waiter:
    """A request waiting for a slot on its model."""

    request_id: str
    model: str
    prompt_tokens: int
    max_tokens: int
    enqueued_at: float
    deadline: float
    request: object = None
    """The full ``RouteRequest`` (its constraints: excluded nodes, tools, sealed recipients)."""


class ModelQueue:
    """FIFO of waiters for one model; removal by id is O(1) (a client that left)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: OrderedDict[str, Waiter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, waiter: Waiter) -> None:
        self._items[waiter.request_id] = waiter

    def head(self) -> Waiter | None:
        return next(iter(self._items.values()), None)

    def pop_head(self) -> Waiter:
        return self._items.popitem(last=False)[1]

    def remove(self, request_id: str) -> Waiter | None:
        return self._items.pop(request_id, None)

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the waiters whose deadline has passed (they are at the front: FIFO, same timeout)."""
        out = []
        while self._items:
            first = next(iter(self._items.values()))
            if first.deadline > now:
                break
            out.append(self._items.popitem(last=False)[1])
        return out


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def retry_after_s(depth: int, drain_per_s: float = 0.0, wait_ewma_s: float = 0.0, feasible_after_ms: int | None = None) -> int:
    """Seconds a refused client should wait before retrying (the ``Retry-After`` header).

    The original's rules, in order of precedence: a node's own
    ``feasible_after_ms`` wins (clamped to 2-30 s); when queued requests
    have lately waited over 1 s, ``ceil(wait) x 5`` capped at 60; with a
    queue, ``depth x 3`` clamped to 2-30; else 2. Where the fleet's measured
    drain rate for the model is known we use ``depth / rate`` instead of the
    fixed 3 s per queued request (same clamp): the queue will have moved by
    then, whatever the model's speed.

    Args:
        depth: Requests queued for the model now.
        drain_per_s: Requests per second the model's nodes complete (0 = unknown).
        wait_ewma_s: EWMA of recent queue waits for the model.
        feasible_after_ms: A node's capacity refusal hint, if any.
    """
    if feasible_after_ms is not None and feasible_after_ms > 0:
        return int(clamp(math.ceil(feasible_after_ms / 1000), 2, 30))
    if wait_ewma_s > 1.0:
        return int(min(math.ceil(wait_ewma_s) * 5, 60))
    if depth > 0:
        per_request = 1.0 / drain_per_s if drain_per_s > 0 else 3.0
        return int(clamp(math.ceil(depth * per_request), 2, 30))
    return 2
