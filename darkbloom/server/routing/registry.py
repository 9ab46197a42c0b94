"""Registry of connected nodes and what they serve. Pure: no IO, clock passed in.

The registry is the routing state; ``pick`` is the routing decision. The
async shell (``darkbloom.server.fleet``) feeds it frames and asks it where to
send each request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from darkbloom.protocol import Capacity, Hardware, ModelInfo

DEFAULT_MAX_IN_FLIGHT = 8


def concurrency_cap_for_ram(memory_gb: float) -> int:
    """Concurrency cap for a node that has sent no capacity report (seed table)."""
    if memory_gb <= 0:
        return DEFAULT_MAX_IN_FLIGHT
    for limit, cap in ((24, 2), (48, 4), (96, 6), (128, 8)):
        if memory_gb <= limit:
            return cap
    return 12


@dataclass
class NodeState:
    """What the coordinator knows about one connected node."""

    node_id: str
    models: dict[str, ModelInfo]
    hardware: Hardware
    connected_at: float
    last_seen: float
    capacity: Capacity | None = None
    in_flight: int = 0
    served: int = 0
    version: str = ""

    def max_in_flight(self, model: str) -> int:
        if self.capacity is not None:
            for slot in self.capacity.slots:
                if slot.model == model:
                    return max(1, slot.max_concurrency)
        return concurrency_cap_for_ram(self.hardware.memory_gb)

    def routable_models(self) -> list[str]:
        return [m for m, info in self.models.items() if info.template_render_ok]


@dataclass
class Registry:
    """Every connected node, indexed by id; every model ever seen since start."""

    nodes: dict[str, NodeState] = field(default_factory=dict)
    known_models: set[str] = field(default_factory=set)

    def add(self, node_id: str, models: tuple[ModelInfo, ...], hardware: Hardware, now: float, *, version: str = "", capacity: Capacity | None = None) -> NodeState:
        state = NodeState(
            node_id=node_id,
            models={m.id: m for m in models},
            hardware=hardware,
            connected_at=now,
            last_seen=now,
            capacity=capacity,
            version=version,
        )
        self.nodes[node_id] = state
        self.known_models.update(state.routable_models())
        return state

    def remove(self, node_id: str) -> NodeState | None:
        return self.nodes.pop(node_id, None)

    def heartbeat(self, node_id: str, capacity: Capacity | None, now: float) -> bool:
        """Record a heartbeat; return False when the capacity snapshot was stale and dropped."""
        state = self.nodes.get(node_id)
        if state is None:
            return False
        state.last_seen = now
        if capacity is None:
            return True
        if state.capacity is not None and capacity.capacity_seq <= state.capacity.capacity_seq:
            return False
        state.capacity = capacity
        return True

    def expired(self, now: float, timeout_s: float) -> list[str]:
        """Nodes silent for longer than ``timeout_s`` (the seed evicts after 90 s)."""
        return [n.node_id for n in self.nodes.values() if now - n.last_seen > timeout_s]

    def models(self) -> list[str]:
        """Models at least one connected node can serve, sorted."""
        return sorted({m for n in self.nodes.values() for m in n.routable_models()})

    def candidates(self, model: str) -> list[NodeState]:
        return [n for n in self.nodes.values() if model in n.models and n.models[model].template_render_ok]

    def pick(self, model: str) -> NodeState | None:
        """The node to send a request for ``model`` to, or ``None`` if no node serves it.

        Least loaded relative to its concurrency cap; ties go to the node that
        has served fewer requests, so load spreads over equal nodes.
        """
        best: NodeState | None = None
        best_key: tuple[float, int] | None = None
        for node in self.candidates(model):
            key = (node.in_flight / node.max_in_flight(model), node.served)
            if best_key is None or key < best_key:
                best, best_key = node, key
        return best
