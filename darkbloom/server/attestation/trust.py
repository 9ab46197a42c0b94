"""One attested node's trust as a pure state machine: challenges, answers, fencing.

No IO and no clock of its own: every method takes ``now``. The async shell
(``service.py``) issues nonces, sends frames and applies the verdicts to
routing.

Rules (the seed's): a challenge must be answered within ``answer_timeout_s``;
a node is routable only when its last challenge passed within
``pass_window_s`` and nothing has failed since; a failed, late or replayed
answer fences it until it passes again; ``untrusted_after`` consecutive
failures make it untrusted for the rest of the connection; ``close_after``
consecutive timeouts close the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from darkbloom.protocol import SignedAttestation
from darkbloom.protocol.sealed import AttestationBundle, AttestationError, TrustLevel, verify_challenge

TrustVerdict = Literal["trusted", "fenced", "untrusted"]


@dataclass(frozen=True)
class TrustPolicy:
    """Challenge cadence and fencing thresholds."""

    interval_s: float = 300.0
    answer_timeout_s: float = 30.0
    pass_window_s: float = 960.0
    untrusted_after: int = 3
    close_after_timeouts: int = 6


@dataclass(frozen=True)
class Outcome:
    """The result of one answer or timeout."""

    passed: bool
    reason: str
    kind: str = ""
    """A short label for metrics: replayed, unsolicited, late, timeout, bad_answer."""


@dataclass
class NodeTrust:
    """What the coordinator knows about one attested node's trust."""

    bundle: AttestationBundle
    signed: SignedAttestation
    trust_level: TrustLevel
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    pending: str | None = None
    pending_since: float = 0.0
    answered: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    last_pass: float | None = None
    failing: bool = False
    consecutive_failures: int = 0
    consecutive_timeouts: int = 0
    untrusted: bool = False
    passes: int = 0
    failures: int = 0
    last_reason: str = "awaiting the first challenge answer"

    @property
    def node_id(self) -> str:
        return self.bundle.node_id

    def issue(self, nonce: str, now: float) -> None:
        """A new challenge went out; any earlier one still open counts as late."""
        if self.pending is not None:
            self.timeout(now)
        self.pending = nonce
        self.pending_since = now

    def _fail(self, reason: str, kind: str) -> Outcome:
        self.failing = True
        self.failures += 1
        self.consecutive_failures += 1
        self.last_reason = reason
        if self.consecutive_failures >= self.policy.untrusted_after:
            self.untrusted = True
        return Outcome(False, reason, kind)

    def answer(self, nonce: str, state: str, signature: str, now: float) -> Outcome:
        """Judge an ``attestation_response``."""
        if nonce in self.expired:
            self.expired.discard(nonce)  # already failed as a timeout: fenced, not failed twice
            return Outcome(False, "late answer to a challenge that already timed out", "late")
        if nonce in self.answered:
            return self._fail("replayed answer to an earlier challenge", "replayed")
        if self.pending is None or nonce != self.pending:
            return self._fail("answer to a challenge that was never issued", "unsolicited")
        self.pending = None
        self.answered.add(nonce)
        if now - self.pending_since > self.policy.answer_timeout_s:
            self.consecutive_timeouts += 1
            return self._fail(
                f"late answer ({now - self.pending_since:.0f} s; limit {self.policy.answer_timeout_s:g} s)", "late"
            )
        try:
            verify_challenge(nonce, state, signature, self.bundle)
        except AttestationError as exc:
            return self._fail(str(exc), "bad_answer")
        self.last_pass = now
        self.failing = False
        self.consecutive_failures = 0
        self.consecutive_timeouts = 0
        self.passes += 1
        self.last_reason = ""
        return Outcome(True, "")

    def timeout(self, now: float) -> Outcome | None:
        """Fail the open challenge if its deadline has passed (``None`` when nothing is due)."""
        if self.pending is None or now - self.pending_since <= self.policy.answer_timeout_s:
            return None
        self.expired.add(self.pending)  # a later answer to it is late, never a pass
        self.pending = None
        self.consecutive_timeouts += 1
        return self._fail(f"no answer to the challenge within {self.policy.answer_timeout_s:g} s", "timeout")

    def routable(self, now: float) -> bool:
        """Whether routing may send this node work now."""
        return (
            not self.untrusted
            and not self.failing
            and self.last_pass is not None
            and now - self.last_pass <= self.policy.pass_window_s
        )

    def verdict(self, now: float) -> TrustVerdict:
        if self.untrusted:
            return "untrusted"
        return "trusted" if self.routable(now) else "fenced"

    def reason(self, now: float) -> str:
        if self.routable(now):
            return ""
        if not self.failing and self.last_pass is not None:
            return f"no passed challenge in the last {self.policy.pass_window_s:g} s"
        return self.last_reason

    @property
    def should_close(self) -> bool:
        return self.consecutive_timeouts >= self.policy.close_after_timeouts
