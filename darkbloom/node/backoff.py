"""Reconnect delays as a generator (testable without sockets)."""

from __future__ import annotations

from collections.abc import Iterator


def backoff(initial: float = 1.0, maximum: float = 30.0, factor: float = 2.0) -> Iterator[float]:
    """1 s doubling to 30 s, then 30 s forever (the seed's reconnect schedule)."""
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)
