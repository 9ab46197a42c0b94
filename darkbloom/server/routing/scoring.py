"""Scoring by expected time to first token, and node reputation. Pure arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

EWMA_ALPHA = 0.2
"""Weight of the newest sample (the original's route-latency EWMA uses 0.2)."""

DEFAULT_PREFILL_TPS = 500.0
DEFAULT_DECODE_TPS = 30.0
LOAD_SLOWDOWN = 0.39
"""Effective decode rate under load: solo / (1 + 0.39 x running), measured on the original fleet."""


def ewma(old: float, sample: float, alpha: float = EWMA_ALPHA) -> float:
    """Fold ``sample`` into ``old``; an unset average (0) takes the sample as is."""
    if old <= 0.0:
        return sample
    return old + alpha * (sample - old)


@dataclass(slots=True)
class Rates:
    """One slot's measured speeds (EWMA over heartbeat capacity reports)."""

    decode_tps: float = 0.0
    prefill_tps: float = 0.0

    def observe(self, decode_tps: float, prefill_tps: float) -> None:
        if decode_tps > 0:
            self.decode_tps = ewma(self.decode_tps, decode_tps)
        if prefill_tps > 0:
            self.prefill_tps = ewma(self.prefill_tps, prefill_tps)

    def prefill(self) -> float:
        return self.prefill_tps if self.prefill_tps > 0 else DEFAULT_PREFILL_TPS

    def decode(self, running: int = 0) -> float:
        solo = self.decode_tps if self.decode_tps > 0 else DEFAULT_DECODE_TPS
        return solo / (1.0 + LOAD_SLOWDOWN * running)


def expected_ttft(prompt_tokens: int, rates: Rates, queue_ahead_tokens: int, rtt_s: float) -> float:
    """Seconds until the first token: prefill of the work queued ahead and of this prompt, plus the round trip."""
    return (queue_ahead_tokens + prompt_tokens) / rates.prefill() + rtt_s


@dataclass(slots=True)
class Reputation:
    """Recent behaviour of a node, folded into one number in 0..1.

    The original's weights: 0.4 job success + 0.3 uptime (full at 24 h) + 0.2
    challenge pass rate + 0.1 response factor (1 at <= 1 s TTFT, 0 at >= 10 s);
    an unknown part counts 0.5. Cancels the node caused (not the consumer's)
    count as failures.
    """

    success: float = -1.0
    challenge_pass: float = -1.0
    ttft_s: float = -1.0

    def record_job(self, ok: bool) -> None:
        self.success = _fold(self.success, 1.0 if ok else 0.0, 0.1)

    def record_challenge(self, ok: bool) -> None:
        self.challenge_pass = _fold(self.challenge_pass, 1.0 if ok else 0.0, EWMA_ALPHA)

    def record_ttft(self, seconds: float) -> None:
        self.ttft_s = _fold(self.ttft_s, seconds, EWMA_ALPHA)

    def score(self, uptime_s: float) -> float:
        success = self.success if self.success >= 0 else 0.5
        challenge = self.challenge_pass if self.challenge_pass >= 0 else 0.5
        if self.ttft_s < 0:
            response = 0.5
        else:
            response = min(1.0, max(0.0, (10.0 - self.ttft_s) / 9.0))
        return 0.4 * success + 0.3 * min(uptime_s / 86400.0, 1.0) + 0.2 * challenge + 0.1 * response


def penalised(ttft_s: float, reputation: float) -> float:
    """Expected TTFT inflated for a node of poor reputation (x1 at 1.0, x2 at 0)."""
    return ttft_s * (2.0 - reputation)


def _fold(old: float, sample: float, alpha: float) -> float:
    """EWMA where a negative ``old`` means unset (0 is a real value here)."""
    return sample if old < 0 else old + alpha * (sample - old)
