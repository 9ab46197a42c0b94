"""The async shell around ``NodeTrust``: verify bundles, challenge nodes, fence them.

One watcher task per attested connection challenges the node on registration
and then every ``interval_s``; answers arrive through ``on_answer`` from the
provider socket. Each verdict is applied to routing (``Fleet.set_trust``: only a ``trusted`` node routes)
and told to the node in a ``trust_status`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from darkbloom.protocol import AttestationChallenge, AttestationResponse, Register, TrustStatus
from darkbloom.protocol.sealed import AttestationBundle, AttestationError, verify_attestation
from darkbloom.server.attestation.trust import NodeTrust, TrustPolicy

log = logging.getLogger(__name__)

Close = Callable[[str], Awaitable[None]]


class HardwareVerifier(Protocol):
    """Checks a bundle's ``hardware_evidence`` (a macOS deployment can plug one in).

    A Secure Enclave verifier would check the evidence's certificate chain to
    Apple's attestation root, that the attested public key is the bundle's
    ``signing_key``, that the key is Secure-Enclave resident and not
    exportable, the boot policy (SIP enabled, full secure boot), and that the
    code-signing identity of the provider binary is a released darkbloom build.
    """

    def verify(self, bundle: AttestationBundle) -> bool: ...


class Link(Protocol):
    async def send(self, frame: Any) -> None: ...


class AttestationService:
    """Every attested node's trust, and the challenge loop that keeps it fresh.

    Args:
        fleet: The live fleet (``Fleet.set_trust`` is how a verdict reaches routing).
        policy: Challenge cadence and thresholds.
        bundle_max_age_s: Oldest registration bundle accepted.
        require_attestation: Refuse nodes that send no bundle.
        hardware_verifier: Verifies ``hardware`` trust claims; without one they count as ``software``.
        on_failure: Called with a short kind (``bundle_expired``, ``replayed``, ``timeout``...)
            for each failed attestation (the metrics counter).
    """

    def __init__(
        self,
        fleet: Any,
        policy: TrustPolicy,
        *,
        bundle_max_age_s: float = 300.0,
        require_attestation: bool = False,
        hardware_verifier: HardwareVerifier | None = None,
        wall: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.bundle_max_age_s = bundle_max_age_s
        self.require_attestation = require_attestation
        self.hardware_verifier = hardware_verifier
        self.wall = wall
        self.on_failure = on_failure or (lambda kind: None)
        self.trusts: dict[str, NodeTrust] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def admit(self, frame: Register) -> NodeTrust | None:
        """Verify a registration's bundle.

        Returns:
            The node's trust record, or ``None`` for an unattested node (allowed
            unless ``require_attestation``).

        Raises:
            AttestationError: the bundle is invalid, expired, or does not match the frame.
        """
        if frame.attestation is None:
            if self.require_attestation:
                raise AttestationError(
                    "this coordinator only accepts attested nodes; the register frame carries no attestation bundle"
                )
            return None
        try:
            bundle = self._verify(frame)
        except AttestationError as exc:
            self.on_failure("bundle_expired" if "expired" in str(exc) else "bundle_invalid")
            raise
        level = bundle.trust_level
        if level == "hardware" and (self.hardware_verifier is None or not self.hardware_verifier.verify(bundle)):
            log.info(
                "node %s claims hardware trust without verifiable evidence; treating it as software", bundle.node_id
            )
            level = "software"
        return NodeTrust(bundle=bundle, signed=frame.attestation, trust_level=level, policy=self.policy)

    def _verify(self, frame: Register) -> AttestationBundle:
        assert frame.attestation is not None
        bundle = verify_attestation(frame.attestation, now=self.wall(), max_age_s=self.bundle_max_age_s)
        if bundle.node_id != frame.node_id:
            raise AttestationError(
                f"register frame names node {frame.node_id!r} but the bundle is for {bundle.node_id!r}"
            )
        if frame.public_key is not None and frame.public_key != bundle.encryption_key:
            raise AttestationError("register frame's public_key differs from the attested encryption key")
        return bundle

    def attach(self, node_state: Any, trust: NodeTrust | None) -> None:
        """Record the trust on the registry entry; an attested node is fenced until it passes."""
        node_state.attestation = trust
        node_state.trust_level = trust.trust_level if trust is not None else "none"
        if trust is not None:
            self.trusts[trust.node_id] = trust
            self.fleet.set_trust(trust.node_id, "fenced")

    def start(self, node_id: str, link: Link, close: Close) -> None:
        """Start challenging a newly registered attested node."""
        old = self._tasks.pop(node_id, None)
        if old is not None:  # a reconnect replaced the connection this watcher served
            old.cancel()
        self._wake[node_id] = asyncio.Event()
        self._tasks[node_id] = asyncio.create_task(self._watch(node_id, link, close), name=f"attest-{node_id}")

    async def stop(self, node_id: str, trust: NodeTrust | None = None) -> None:
        """Stop the node's watcher (it disconnected), unless a newer connection owns the id."""
        if trust is not None and self.trusts.get(node_id) is not trust:
            return
        task = self._tasks.pop(node_id, None)
        self.trusts.pop(node_id, None)
        self._wake.pop(node_id, None)
        self._answered.pop(node_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def challenge_now(self, node_id: str) -> None:
        """Challenge a node without waiting for the interval (operators, tests)."""
        wake = self._wake.get(node_id)
        if wake is not None:
            wake.set()

    async def _watch(self, node_id: str, link: Link, close: Close) -> None:
        trust = self.trusts[node_id]
        while True:
            nonce = secrets.token_hex(32)
            answered = self._answered[node_id] = asyncio.Event()
            trust.issue(nonce, self.fleet.clock())
            await link.send(AttestationChallenge(nonce=nonce, timestamp=self.wall()))
            try:
                await asyncio.wait_for(answered.wait(), self.policy.answer_timeout_s)
            except TimeoutError:
                now = max(self.fleet.clock(), trust.pending_since + self.policy.answer_timeout_s + 1e-3)
                outcome = trust.timeout(now)
                if outcome is not None:
                    log.warning("node %s failed its challenge: %s", node_id, outcome.reason)
                    self.on_failure(outcome.kind)
                await self._apply(trust, link)
                if trust.should_close:
                    await close(f"{trust.consecutive_timeouts} challenges unanswered")
                    return
            wake = self._wake.get(node_id)
            if wake is None:
                return
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.policy.interval_s)

    async def on_answer(self, node_id: str, frame: AttestationResponse, link: Link) -> None:
        """Judge an answer from a node and apply the verdict."""
        trust = self.trusts.get(node_id)
        if trust is None:
            log.info("node %s answered a challenge but registered without attestation; ignored", node_id)
            return
        was_pending = trust.pending
        outcome = trust.answer(frame.nonce, frame.state, frame.signature, self.fleet.clock())
        if not outcome.passed:
            log.warning("node %s failed its challenge: %s", node_id, outcome.reason)
            self.on_failure(outcome.kind)
        if was_pending is not None and trust.pending is None:
            event = self._answered.get(node_id)
            if event is not None:
                event.set()
        await self._apply(trust, link)

    async def _apply(self, trust: NodeTrust, link: Link) -> None:
        now = self.fleet.clock()
        node = self.fleet.registry.nodes.get(trust.node_id)
        verdict = trust.verdict(now)
        if node is not None and node.attestation is trust:
            if verdict != node.trust:
                log.info("node %s is now %s", trust.node_id, verdict)
            self.fleet.set_trust(trust.node_id, verdict)
        status = TrustStatus(trust_level=trust.trust_level, status=verdict, reason=trust.reason(now))
        with contextlib.suppress(Exception):  # the socket may be closing; the node learns on reconnect
            await link.send(status)

    def refresh(self) -> None:
        """Re-fence nodes whose last pass fell out of the window (called on each routing read path)."""
        now = self.fleet.clock()
        for trust in self.trusts.values():
            node = self.fleet.registry.nodes.get(trust.node_id)
            if node is not None and node.attestation is trust and node.trust == "trusted" and not trust.routable(now):
                self.fleet.set_trust(trust.node_id, trust.verdict(now))
