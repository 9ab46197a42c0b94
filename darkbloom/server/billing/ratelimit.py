"""Per-consumer token-bucket rate limits, pure: the clock is passed in.

Three buckets per consumer, as the original: requests per second (with a
burst), input tokens per minute and output tokens per minute. A request is
admitted only if every bucket can pay for it; otherwise nothing is taken and
the caller learns how long to wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from darkbloom.protocol.openai import RequestError


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    rate: float
    capacity: float
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if now > self.updated:  # (a clock that steps back refills nothing)
            tokens = self.tokens + (now - self.updated) * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0 when it can now). Amounts over capacity count as a full bucket."""
        self._refill(now)
        need = (amount if amount < self.capacity else self.capacity) - self.tokens
        if need <= 0:
            return 0.0
        return math.inf if self.rate <= 0 else need / self.rate

    def take(self, amount: float) -> None:
        self.tokens -= min(amount, self.capacity)


@dataclass(frozen=True)
class RateLimits:
    """Limits per consumer; a rate of 0 disables that bucket."""

    requests_per_s: float = 20.0
    burst: int = 120
    input_tokens_per_min: int = 5_000_000
    output_tokens_per_min: int = 500_000


@dataclass
class RateLimiter:
    limits: RateLimits = field(default_factory=RateLimits)
    _buckets: dict[str, tuple[TokenBucket, TokenBucket, TokenBucket]] = field(default_factory=dict)

    def _for(self, key: str, now: float) -> tuple[TokenBucket, TokenBucket, TokenBucket]:
        b = self._buckets.get(key)
        if b is None:
            lim = self.limits
            b = (
                TokenBucket(lim.requests_per_s, lim.burst, updated=now),
                TokenBucket(lim.input_tokens_per_min / 60.0, lim.input_tokens_per_min, updated=now),
                TokenBucket(lim.output_tokens_per_min / 60.0, lim.output_tokens_per_min, updated=now),
            )
            self._buckets[key] = b
        return b

    def check(self, key: str, now: float, input_tokens: int = 0, output_tokens: int = 0) -> float:
        """Admit (and charge the buckets) or return the seconds to wait before retrying."""
        requests, inputs, outputs = self._for(key, now)
        # Unrolled (no generator, list or max over three): this runs for every request, before dispatch.
        wait = 0.0
        if requests.rate > 0:
            wait = requests.wait(1.0, now)
        if inputs.rate > 0:
            wait = max(wait, inputs.wait(input_tokens, now))
        if outputs.rate > 0:
            wait = max(wait, outputs.wait(output_tokens, now))
        if wait > 0:
            return wait
        if requests.rate > 0:
            requests.take(1.0)
        if inputs.rate > 0:
            inputs.take(input_tokens)
        if outputs.rate > 0:
            outputs.take(output_tokens)
        return 0.0


def retry_after_header(wait: float) -> str:
    """Whole seconds for ``Retry-After`` (at least 1, so clients always back off)."""
    return str(max(1, min(3600, math.ceil(wait)))) if math.isfinite(wait) else "3600"


def rate_limited(message: str, wait: float) -> RequestError:
    """The 429 for a request over a limit, telling the client when to retry."""
    return RequestError(
        429, message, type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": retry_after_header(wait)}
    )
