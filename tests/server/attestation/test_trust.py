"""The trust state machine with the clock passed in: cadence, deadlines, fencing."""

from __future__ import annotations

from darkbloom.node.attestation import NodeAttestor
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import AttestationChallenge, Hardware
from darkbloom.protocol.sealed import verify_attestation
from darkbloom.server.attestation.trust import NodeTrust, TrustPolicy

DEFAULT = TrustPolicy()


def _trust(policy: TrustPolicy = DEFAULT) -> tuple[NodeTrust, NodeAttestor]:
    attestor = NodeAttestor(NodeKeys.generate(), Hardware(), {"m": "00"}, code_hash="x")
    signed = attestor.bundle()
    return NodeTrust(verify_attestation(signed), signed, "software", policy), attestor


def _answer(trust: NodeTrust, attestor: NodeAttestor, nonce: str, now: float):  # type: ignore[no-untyped-def]
    resp = attestor.answer(AttestationChallenge(nonce=nonce, timestamp=0), ["m"], 0)
    return trust.answer(resp.nonce, resp.state, resp.signature, now)


def test_answer_within_the_deadline_passes_and_the_pass_lasts_sixteen_minutes() -> None:
    trust, attestor = _trust()
    assert not trust.routable(0)
    trust.issue("n1", 0)
    assert _answer(trust, attestor, "n1", 29).passed
    assert trust.routable(29) and trust.verdict(29) == "trusted"
    assert trust.routable(29 + 960)
    assert not trust.routable(29 + 961) and trust.verdict(29 + 961) == "fenced"
    assert "960" in trust.reason(29 + 961)


def test_late_answer_fails_and_fences_until_the_next_pass() -> None:
    trust, attestor = _trust()
    trust.issue("n1", 0)
    _answer(trust, attestor, "n1", 1)
    trust.issue("n2", 300)
    outcome = _answer(trust, attestor, "n2", 331)
    assert not outcome.passed and "late" in outcome.reason
    assert not trust.routable(331)
    trust.issue("n3", 600)
    assert _answer(trust, attestor, "n3", 601).passed and trust.routable(601)


def test_timeout_then_late_answer_counts_once_and_never_passes() -> None:
    trust, attestor = _trust()
    trust.issue("n1", 0)
    assert trust.timeout(10) is None  # not due yet
    outcome = trust.timeout(31)
    assert outcome is not None and not outcome.passed
    late = _answer(trust, attestor, "n1", 40)
    assert not late.passed and trust.consecutive_failures == 1


def test_an_answer_signed_by_another_key_fails() -> None:
    trust, _ = _trust()
    _, other = _trust()
    trust.issue("n1", 0)
    resp = other.answer(AttestationChallenge(nonce="n1", timestamp=0), ["m"], 0)
    outcome = trust.answer(resp.nonce, resp.state, resp.signature, 1)
    assert not outcome.passed and "does not verify" in outcome.reason


def test_three_consecutive_failures_make_it_untrusted_for_good() -> None:
    trust, attestor = _trust()
    for i in range(3):
        trust.issue(f"n{i}", i * 100)
        trust.timeout(i * 100 + 31)
    assert trust.untrusted and trust.verdict(400) == "untrusted"
    trust.issue("ok", 400)
    assert _answer(trust, attestor, "ok", 401).passed
    assert not trust.routable(401)


def test_six_unanswered_challenges_close_the_connection() -> None:
    trust, _ = _trust(TrustPolicy(untrusted_after=99))
    for i in range(6):
        assert not trust.should_close
        trust.issue(f"n{i}", i * 100)
        trust.timeout(i * 100 + 31)
    assert trust.should_close


def test_a_new_challenge_while_one_is_open_times_the_old_one_out() -> None:
    trust, attestor = _trust()
    trust.issue("n1", 0)
    trust.issue("n2", 100)
    assert trust.failing
    assert not _answer(trust, attestor, "n1", 101).passed
    assert _answer(trust, attestor, "n2", 101).passed
