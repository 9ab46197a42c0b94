"""Registry of connected nodes, their slots and routing indexes. Pure: no IO, clock passed in.

A node's *slot* is one model loaded on it, with a ``TokenBudget`` and
measured rates. Two indexes keep routing O(1) in the fleet size: per model,
the nodes with that model warm (``serving``) and the subset with a free
concurrency unit (``available``). Every mutation keeps them in step, and
``remove`` drops every per-node field at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from darkbloom.protocol import Capacity, Hardware, ModelInfo
from darkbloom.server.routing.admission import TokenBudget
from darkbloom.server.routing.breaker import Breaker, BreakerConfig
from darkbloom.server.routing.scoring import Rates, Reputation

DEFAULT_MAX_IN_FLIGHT = 8
COLD_STATES = frozenset({"idle_shutdown", "crashed", "reloading"})


def concurrency_cap_for_ram(memory_gb: float) -> int:
    """Concurrency cap for a node that has sent no capacity report (seed table)."""
    if memory_gb <= 0:
        return DEFAULT_MAX_IN_FLIGHT
    for limit, cap in ((24, 2), (48, 4), (96, 6), (128, 8)):
        if memory_gb <= limit:
            return cap
    return 12


class IndexedSet:
    """A set of ids with O(1) add, discard and uniform random sampling."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        i = self._pos.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def items(self) -> list[str]:
        """The members in index order (a live view: do not mutate)."""
        return self._items

    def sample(self, k: int, rng: random.Random) -> list[str]:
        if k >= len(self._items):
            return list(self._items)
        return rng.sample(self._items, k)


@dataclass(slots=True)
class Slot:
    """One model on one node: admission budget, measured rates, warm or not."""

    model: str
    budget: TokenBudget
    rates: Rates = field(default_factory=Rates)
    warm: bool = True
    reported_waiting: int = 0
    reported_queued_tokens: int = 0


@dataclass
class NodeState:
    """What the coordinator knows about one connected node."""

    node_id: str
    models: dict[str, ModelInfo]
    hardware: Hardware
    connected_at: float
    last_seen: float
    capacity: Capacity | None = None
    version: str = ""
    slots: dict[str, Slot] = field(default_factory=dict)
    rtt_s: float = 0.0
    breaker: Breaker = field(default_factory=Breaker)
    reputation: Reputation = field(default_factory=Reputation)
    trust: str = "trusted"
    pending_loads: dict[str, float] = field(default_factory=dict)
    failed_loads: dict[str, float] = field(default_factory=dict)
    served: int = 0
    in_flight: int = 0
    """Requests dispatched here and not yet released, all models together."""
    attestation: Any = None
    """The node's verified bundle and challenge record (server/attestation ``NodeTrust``); None: unattested."""
    trust_level: str | None = None
    """``none`` (registered without a bundle), ``software`` or ``hardware``; None before registration set it."""
    draining: bool = False
    """The node said it is stopping (heartbeat status ``draining``): it finishes what it has and gets nothing new."""

    @property
    def last_challenge_passed(self) -> float | None:
        """When (fleet clock) the node last passed a challenge; None if never or unattested."""
        return self.attestation.last_pass if self.attestation is not None else None

    def max_in_flight(self, model: str) -> int:
        slot = self.slots.get(model)
        return slot.budget.max_concurrency if slot else concurrency_cap_for_ram(self.hardware.memory_gb)

    def routable_models(self) -> list[str]:
        return [m for m, info in self.models.items() if info.template_render_ok]

    def routable(self, now: float) -> bool:
        return self.trust == "trusted" and not self.draining and not self.breaker.is_open(now)

    @property
    def free_for_load_gb(self) -> float | None:
        return self.capacity.free_for_load_gb if self.capacity is not None else None


@dataclass
class Registry:
    """Every connected node, indexed by id and by warm model; every model ever seen."""

    nodes: dict[str, NodeState] = field(default_factory=dict)
    known_models: set[str] = field(default_factory=set)
    serving: dict[str, IndexedSet] = field(default_factory=dict)
    available: dict[str, IndexedSet] = field(default_factory=dict)
    breaker_config: BreakerConfig = field(default_factory=BreakerConfig)
    slot_total: dict[str, int] = field(default_factory=dict)
    _contrib: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(
        self,
        node_id: str,
        models: tuple[ModelInfo, ...],
        hardware: Hardware,
        now: float,
        *,
        version: str = "",
        capacity: Capacity | None = None,
    ) -> NodeState:
        """Register (or re-register) a node; its previous state, if any, is dropped first."""
        self.remove(node_id)
        state = NodeState(
            node_id=node_id,
            models={m.id: m for m in models},
            hardware=hardware,
            connected_at=now,
            last_seen=now,
            version=version,
            breaker=Breaker(self.breaker_config),
        )
        cap = concurrency_cap_for_ram(hardware.memory_gb)
        for model in state.routable_models():
            # Without a report every model on disk counts as warm, capped by RAM.
            state.slots[model] = Slot(model, TokenBudget(max_concurrency=cap))
        self.nodes[node_id] = state
        self.known_models.update(state.routable_models())
        if capacity is not None:
            self._apply_capacity(state, capacity)
        for model in state.slots:
            self._reindex(state, model)
        return state

    def remove(self, node_id: str) -> NodeState | None:
        """Forget a node and every index entry that names it."""
        state = self.nodes.pop(node_id, None)
        if state is None:
            return None
        for model in state.models:
            self._count(node_id, model, 0)
            for index in (self.serving, self.available):
                members = index.get(model)
                if members is not None:
                    members.discard(node_id)
        return state

    def heartbeat(self, node_id: str, capacity: Capacity | None, now: float, status: str = "serving") -> bool:
        """Record a heartbeat; return False when the capacity snapshot was stale and dropped.

        A ``draining`` status takes the node out of routing (``serving``,
        ``available``, ``models``) until a heartbeat says otherwise.
        """
        state = self.nodes.get(node_id)
        if state is None:
            return False
        state.last_seen = now
        if (status == "draining") != state.draining:
            state.draining = status == "draining"
            for model in state.slots:
                self._reindex(state, model)
        if capacity is None:
            return True
        if state.capacity is not None and capacity.capacity_seq <= state.capacity.capacity_seq:
            return False
        self._apply_capacity(state, capacity)
        for model in state.slots:
            self._reindex(state, model)
        return True

    def _apply_capacity(self, state: NodeState, capacity: Capacity) -> None:
        state.capacity = capacity
        reported = {s.model: s for s in capacity.slots}
        for model in state.routable_models():
            slot = state.slots.get(model)
            report = reported.get(model)
            if report is None:
                if slot is not None:
                    slot.warm = False
                continue
            if slot is None:
                slot = state.slots[model] = Slot(model, TokenBudget())
            slot.budget.max_concurrency = max(1, report.max_concurrency)
            slot.budget.max_tokens = max(0, report.active_token_budget_max)
            slot.warm = report.state not in COLD_STATES
            slot.reported_waiting = report.num_waiting
            slot.reported_queued_tokens = report.queued_token_budget
            slot.rates.observe(report.observed_decode_tps, report.observed_prefill_tps)
            if slot.warm:
                state.pending_loads.pop(model, None)

    def _reindex(self, state: NodeState, model: str) -> None:
        slot = state.slots.get(model)
        serving = self.serving.setdefault(model, IndexedSet())
        available = self.available.setdefault(model, IndexedSet())
        if slot is None or not slot.warm or state.trust != "trusted" or state.draining:
            serving.discard(state.node_id)
            available.discard(state.node_id)
            self._count(state.node_id, model, 0)
            return
        serving.add(state.node_id)
        self._count(state.node_id, model, slot.budget.max_concurrency)
        if slot.budget.has_room():
            available.add(state.node_id)
        else:
            available.discard(state.node_id)

    def _count(self, node_id: str, model: str, slots: int) -> None:
        """Keep ``slot_total[model]`` (warm concurrency over the fleet) in step, O(1)."""
        old = self._contrib.pop((node_id, model), 0)
        if slots:
            self._contrib[(node_id, model)] = slots
        self.slot_total[model] = self.slot_total.get(model, 0) - old + slots

    def set_trust(self, node_id: str, trust: str) -> None:
        """Record attestation status (``trusted``, ``fenced``, ``untrusted``); only trusted nodes route."""
        state = self.nodes.get(node_id)
        if state is not None:
            state.trust = trust
            for model in state.slots:
                self._reindex(state, model)

    def reserve(self, node_id: str, model: str, need: int) -> None:
        """Admit one request on a node's slot (raises ``OverCommit`` if it does not fit)."""
        state = self.nodes[node_id]
        state.slots[model].budget.reserve(need)
        state.served += 1
        state.in_flight += 1
        self._reindex(state, model)

    def release(self, node_id: str, model: str, need: int) -> None:
        """Release what ``reserve`` took; a no-op for a node already gone."""
        state = self.nodes.get(node_id)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        slot = state.slots.get(model)
        if slot is not None:
            slot.budget.release(need)
            self._reindex(state, model)

    def expired(self, now: float, timeout_s: float) -> list[str]:
        """Nodes silent for longer than ``timeout_s`` (the seed evicts after 90 s)."""
        return [n.node_id for n in self.nodes.values() if now - n.last_seen > timeout_s]

    def models(self) -> list[str]:
        """Models at least one connected, trusted node can serve, sorted."""
        return sorted({m for n in self.nodes.values() if n.trust == "trusted" and not n.draining for m in n.routable_models()})

    def candidates(self, model: str) -> list[NodeState]:
        """Connected nodes that have ``model`` warm."""
        members = self.serving.get(model)
        return [self.nodes[n] for n in members.items()] if members else []

    def on_disk(self, model: str) -> list[NodeState]:
        """Connected nodes that could serve ``model`` (warm or not)."""
        return [n for n in self.nodes.values() if model in n.models and n.models[model].template_render_ok]
