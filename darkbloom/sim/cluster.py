"""Simulated provider nodes: heterogeneous Macs that join, leave and fail."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from darkbloom.protocol import Capacity, Hardware, ModelInfo, SlotCapacity
from darkbloom.server.routing.registry import concurrency_cap_for_ram

OS_RESERVE_GB = 4.0

MODELS: dict[str, float] = {"qwen-8b": 5.0, "qwen-32b": 19.0, "llama-70b": 40.0}
"""The simulated catalogue: model id -> weights in GB (4-bit)."""

MEMORY_CLASSES = ((16, 0.15), (24, 0.15), (32, 0.2), (64, 0.2), (96, 0.1), (128, 0.12), (192, 0.08))
"""Unified memory (GB) of the simulated Macs, and how common each is."""


@dataclass(slots=True)
class SimNode:
    """One simulated Mac: its true speeds (routing only sees them through heartbeats)."""

    node_id: str
    memory_gb: float
    decode_tps: dict[str, float]
    prefill_tps: dict[str, float]
    max_concurrency: int
    on_disk: tuple[str, ...]
    warm: set[str]
    straggle_p: float
    joined_at: float = 0.0
    left_at: float | None = None
    prefill_free_at: float = 0.0
    seq: int = 0
    busy_s: float = 0.0
    slot_s: float = 0.0
    slot_since: float = 0.0

    def account(self, now: float) -> None:
        """Accrue slot-seconds (concurrency x warm models) up to ``now``; call before the warm set changes."""
        self.slot_s += self.max_concurrency * len(self.warm) * (now - self.slot_since)
        self.slot_since = now
    flights: set[str] = field(default_factory=set)

    def free_gb(self) -> float:
        return self.memory_gb - OS_RESERVE_GB - sum(MODELS[m] for m in self.warm)

    def model_infos(self) -> tuple[ModelInfo, ...]:
        return tuple(ModelInfo(id=m, size_bytes=int(MODELS[m] * 1e9)) for m in self.on_disk)

    def hardware(self) -> Hardware:
        return Hardware(chip="sim", memory_gb=self.memory_gb)

    def capacity(self, now: float, rng: random.Random, budget_per_slot: int) -> Capacity:
        """The heartbeat's capacity report: measured rates with a little noise, prefill backlog."""
        self.seq += 1
        backlog = max(0.0, self.prefill_free_at - now)
        slots = tuple(
            SlotCapacity(
                model=m,
                state="running",
                max_concurrency=self.max_concurrency,
                active_token_budget_max=budget_per_slot * self.max_concurrency,
                queued_token_budget=int(backlog * self.prefill_tps[m]),
                observed_decode_tps=self.decode_tps[m] * rng.uniform(0.95, 1.05),
                observed_prefill_tps=self.prefill_tps[m] * rng.uniform(0.95, 1.05),
            )
            for m in sorted(self.warm)
        )
        return Capacity(capacity_seq=self.seq, slots=slots, total_memory_gb=self.memory_gb, free_for_load_gb=max(0.0, self.free_gb()))


def make_nodes(n: int, rng: random.Random, warm_fraction: float = 0.8, start_id: int = 0) -> list[SimNode]:
    """``n`` heterogeneous nodes; about ``warm_fraction`` of them start with a model warm."""
    models = list(MODELS)
    popularity = [1.0 / (i + 1) for i in range(len(models))]
    out = []
    for i in range(n):
        mem = rng.choices([m for m, _ in MEMORY_CLASSES], [w for _, w in MEMORY_CLASSES])[0]
        # Bandwidth grows with the memory class; decode speed is bandwidth over model size.
        bandwidth = {16: 100, 24: 120, 32: 200, 64: 400, 96: 400, 128: 546, 192: 800}[mem] * rng.lognormvariate(0, 0.15)
        fits = [m for m in models if MODELS[m] + OS_RESERVE_GB <= mem]
        decode = {m: 0.7 * bandwidth / MODELS[m] for m in fits}
        prefill = {m: decode[m] * rng.uniform(12, 25) for m in fits}
        warm: set[str] = set()
        if fits and rng.random() < warm_fraction:
            warm.add(rng.choices(fits, [popularity[models.index(m)] for m in fits])[0])
        out.append(
            SimNode(
                node_id=f"sim-{start_id + i:05d}",
                memory_gb=float(mem),
                decode_tps=decode,
                prefill_tps=prefill,
                max_concurrency=concurrency_cap_for_ram(mem),
                on_disk=tuple(fits),
                warm=warm,
                straggle_p=0.02 if rng.random() < 0.1 else 0.0,
            )
        )
    return out


def fleet_capacity_rps(nodes: list[SimNode], mean_output: float) -> float:
    """Rough requests/s the warm fleet completes at full concurrency (to pick a default load)."""
    total = 0.0
    for node in nodes:
        for m in node.warm:
            per_stream = node.decode_tps[m] / (1 + 0.39 * (node.max_concurrency - 1))
            total += node.max_concurrency * per_stream / mean_output
    return max(total, 1e-9)


def lognormal_mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma * sigma / 2)
