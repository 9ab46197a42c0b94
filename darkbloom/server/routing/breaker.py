"""Per-node circuit breaker: stop routing to a node that keeps failing.

Two rules from the original coordinator: a burst of errors (2 in 60 s) opens
the breaker for a long cooldown; a run of faults (5 consecutive, or over 80 %
of at least 20 in 120 s) opens it for 60 s, doubling each time up to 5 min.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    burst_errors: int = 2
    burst_window_s: float = 60.0
    burst_cooldown_s: float = 300.0
    consecutive_faults: int = 5
    rate_window_s: float = 120.0
    rate_min_samples: int = 20
    rate_threshold: float = 0.8
    base_cooldown_s: float = 60.0
    max_cooldown_s: float = 300.0


@dataclass(slots=True)
class Breaker:
    """One node's failure history and whether it is open (not routable) now."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    open_until: float = 0.0
    consecutive: int = 0
    trips: int = 0
    errors: deque[float] = field(default_factory=deque)
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def record(self, ok: bool, now: float) -> bool:
        """Record one request outcome; return True when this trips the breaker."""
        cfg = self.config
        self.outcomes.append((now, ok))
        while self.outcomes and now - self.outcomes[0][0] > cfg.rate_window_s:
            self.outcomes.popleft()
        if ok:
            self.consecutive = 0
            if not self.is_open(now) and self.trips and len(self.outcomes) >= cfg.rate_min_samples:
                self.trips = 0  # a clean stretch forgets the doubling
            return False
        self.consecutive += 1
        self.errors.append(now)
        while self.errors and now - self.errors[0] > cfg.burst_window_s:
            self.errors.popleft()
        if len(self.errors) >= cfg.burst_errors:
            return self._trip(now, cfg.burst_cooldown_s)
        failures = sum(1 for _, good in self.outcomes if not good)
        if self.consecutive >= cfg.consecutive_faults or (
            len(self.outcomes) >= cfg.rate_min_samples and failures / len(self.outcomes) > cfg.rate_threshold
        ):
            cooldown = min(cfg.max_cooldown_s, cfg.base_cooldown_s * (2**self.trips))
            return self._trip(now, cooldown)
        return False

    def _trip(self, now: float, cooldown: float) -> bool:
        self.open_until = max(self.open_until, now + cooldown)
        self.trips += 1
        self.consecutive = 0
        self.errors.clear()
        return True
