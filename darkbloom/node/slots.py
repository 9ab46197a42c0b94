"""Model slots: which models are loaded, their states, the memory gate and idle unloading.

A node holds up to ``max_slots`` loaded models (3 by default). Each slot is in
one of the protocol's states; the legal moves are the table below and an
illegal one raises, so a bug shows up as an error, not as a wrong heartbeat::

    reloading -> idle | crashed | idle_shutdown      (load done / failed / unloaded)
    idle      -> running | idle_shutdown | crashed   (request / idle unload / thread died)
    running   -> idle | idle_shutdown | crashed      (drained / unload command / died)
    idle_shutdown, crashed -> reloading              (a request or load_model)

Which slots to unload is decided by ``idle_unloads`` (pure, ``now`` passed in);
the async shell below loads engines off the event loop and answers the
coordinator's ``load_model``/``unload_model`` with ``LoadModelStatus``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from darkbloom.node.engine.base import Engine
from darkbloom.node.memory import (
    MemoryPolicy,
    free_for_load_gb,
    kv_bytes_per_token,
    kv_headroom_bytes,
    kv_token_budget,
    load_gate,
)
from darkbloom.protocol import Capacity, LoadModelStatus, ModelInfo, SlotCapacity
from darkbloom.protocol.frames import SlotState

log = logging.getLogger(__name__)

TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    "reloading": frozenset({"idle", "crashed", "idle_shutdown"}),
    "idle": frozenset({"running", "idle_shutdown", "crashed"}),
    "running": frozenset({"idle", "idle_shutdown", "crashed"}),
    "idle_shutdown": frozenset({"reloading"}),
    "crashed": frozenset({"reloading"}),
}
LOADED: frozenset[SlotState] = frozenset({"idle", "running"})
DEFAULT_IDLE_UNLOAD_S = 3600.0


class IllegalTransition(RuntimeError):
    """A slot was asked to move between states the table does not connect."""


EngineFactory = Callable[[Path, str, ModelInfo, int], Engine]
"""(model dir, model id, info, kv bytes per token) -> a started engine."""


@dataclass
class Slot:
    """One model this node can serve, loaded or not."""

    model_id: str
    path: Path
    info: ModelInfo
    state: SlotState = "idle_shutdown"
    engine: Engine | None = None
    last_used: float = 0.0
    error: str = ""
    kv_per_token: int = 0

    def move(self, to: SlotState) -> None:
        if to == self.state:
            return
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"slot {self.model_id}: {self.state} -> {to} is not a legal move")
        self.state = to

    @property
    def weight_bytes(self) -> int:
        return self.info.size_bytes


def idle_unloads(slots: list[Slot], now: float, idle_after_s: float, busy: Callable[[Slot], bool]) -> list[str]:
    """Loaded slots with no work whose last use is at least ``idle_after_s`` ago (pure)."""
    return [s.model_id for s in slots if s.state in LOADED and not busy(s) and now - s.last_used >= idle_after_s]


def _kv_per_token(path: Path) -> int:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    dtype = 4 if str(config.get("torch_dtype", "")) == "float32" else 2
    return kv_bytes_per_token(config, dtype)


def mlx_engine_factory(max_concurrency: int) -> EngineFactory:
    """The real thing: an ``MLXEngine`` per slot."""

    def make(path: Path, model_id: str, info: ModelInfo, kv_per_token: int) -> Engine:
        from darkbloom.node.engine.mlx_engine import MLXEngine

        engine = MLXEngine(
            path,
            model_id,
            max_concurrency=max_concurrency,
            context_length=info.context_length or None,
            kv_bytes_per_token=kv_per_token,
        )
        engine.wait_ready()  # type: ignore[attr-defined]
        return engine

    return make


class LoadedEngines(Mapping[str, Engine]):
    """Model id -> engine of every loaded slot, read live (slots load and unload under it)."""

    def __init__(self, slots: dict[str, Slot]) -> None:
        self._slots = slots

    def _live(self) -> dict[str, Engine]:
        return {mid: s.engine for mid, s in self._slots.items() if s.engine is not None and s.state in LOADED}

    def __getitem__(self, model_id: str) -> Engine:
        return self._live()[model_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())


@dataclass
class SlotManager:
    """The node's model slots behind one lock (loads and unloads are serialized).

    Args:
        models: Every model this node may serve, by id (from the scan or ``--model``).
        total_memory_bytes: Physical RAM.
        factory: Builds and starts an engine (blocking; run off the event loop).
        max_slots: Most models loaded at once.
        idle_unload_s: Unload a model this long unused.
        policy: The memory cap knobs.
        clock: Monotonic seconds; injected so tests drive idle unloading.
    """

    models: dict[str, tuple[Path, ModelInfo]]
    total_memory_bytes: int
    factory: EngineFactory
    max_slots: int = 3
    max_concurrency: int = 8
    """What an unloaded slot reports: the concurrency it will have once loaded."""
    idle_unload_s: float = DEFAULT_IDLE_UNLOAD_S
    policy: MemoryPolicy = field(default_factory=MemoryPolicy.from_env)
    clock: Callable[[], float] = time.monotonic
    on_status: Callable[[str], None] = lambda msg: log.info("%s", msg)

    def __post_init__(self) -> None:
        self.slots: dict[str, Slot] = {
            mid: Slot(mid, path, info, kv_per_token=_kv_per_token(path)) for mid, (path, info) in self.models.items()
        }
        self._lock = asyncio.Lock()
        self.engines = LoadedEngines(self.slots)

    # ---- queries -------------------------------------------------------------------

    def loaded(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.state in LOADED]

    def resident_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.loaded())

    def _busy(self, slot: Slot) -> bool:
        if slot.engine is None:
            return False
        cap = slot.engine.capacity()
        return cap.num_running + cap.num_waiting > 0

    def refresh(self) -> None:
        """Bring running/idle/crashed in line with what each engine is doing."""
        for s in self.loaded():
            if s.engine is not None and not getattr(s.engine, "alive", True):
                s.error = getattr(s.engine, "crashed", "") or "engine thread exited"
                s.move("crashed")
                s.engine = None
                self.on_status(f"model {s.model_id} crashed: {s.error}")
            elif self._busy(s):
                s.move("running")
                s.last_used = self.clock()  # idle time counts from the end of the last request
            else:
                s.move("idle")

    def capacity(self, seq: int, total_memory_gb: float) -> Capacity:
        """The heartbeat's capacity: one entry per slot, KV budgets shared out of the headroom."""
        self.refresh()
        loaded = self.loaded()
        headroom = kv_headroom_bytes(self.total_memory_bytes, self.resident_bytes(), self.policy)
        share = headroom // max(1, len(loaded))
        out: list[SlotCapacity] = []
        for s in self.slots.values():
            if s.engine is not None and s.state in LOADED:
                cap = s.engine.capacity()
                budget = kv_token_budget(share, s.kv_per_token, cap.active_token_budget_max)
                out.append(msgspec.structs.replace(cap, state=s.state, active_token_budget_max=budget))
            elif s.state != "idle_shutdown" or s.last_used:
                # Never-loaded models are advertised in register; only slots with a history are reported.
                out.append(
                    SlotCapacity(
                        model=s.model_id, state=s.state, max_concurrency=self.max_concurrency,
                        kv_bytes_per_token=s.kv_per_token,
                    )
                )
        free = free_for_load_gb(self.total_memory_bytes, self.resident_bytes(), self.policy)
        return Capacity(capacity_seq=seq, slots=tuple(out), total_memory_gb=total_memory_gb, free_for_load_gb=free)

    # ---- commands ------------------------------------------------------------------

    async def load(self, model_id: str) -> LoadModelStatus:
        """Load a model into a slot, evicting the least recently used idle one when all are taken."""
        async with self._lock:
            return await self._load(model_id)

    async def _load(self, model_id: str) -> LoadModelStatus:
        slot = self.slots.get(model_id)
        if slot is None:
            return LoadModelStatus(
                model=model_id, status="load_failed", reason=f"model {model_id!r} is not on this node"
            )
        self.refresh()
        if slot.state in LOADED:
            slot.last_used = self.clock()
            return LoadModelStatus(model=model_id, status="loaded")
        if not slot.info.template_render_ok:
            return LoadModelStatus(model=model_id, status="load_failed", reason="its chat template does not render")
        if len(self.loaded()) >= self.max_slots:
            idle = sorted((s for s in self.loaded() if not self._busy(s)), key=lambda s: s.last_used)
            if not idle:
                reason = f"all {self.max_slots} model slots are busy serving requests"
                return LoadModelStatus(model=model_id, status="load_failed", reason=reason)
            await self._unload(idle[0], "idle_shutdown", why=f"to make room for {model_id}")
        gate = load_gate(self.total_memory_bytes, self.resident_bytes(), slot.weight_bytes, self.policy)
        if not gate.ok:
            self.on_status(f"not loading {model_id}: {gate.reason}")
            return LoadModelStatus(model=model_id, status="load_failed", reason=gate.reason)
        slot.move("reloading")
        try:
            engine = await asyncio.to_thread(self.factory, slot.path, model_id, slot.info, slot.kv_per_token)
        except Exception as exc:
            slot.move("crashed")
            slot.error = f"{type(exc).__name__}: {exc}"
            self.on_status(f"could not load {model_id}: {slot.error}")
            return LoadModelStatus(model=model_id, status="load_failed", reason=slot.error)
        slot.engine, slot.error, slot.last_used = engine, "", self.clock()
        slot.move("idle")
        # The gate used file sizes; if the loaded weights leave less than the minimum KV, give the memory back.
        headroom = kv_headroom_bytes(self.total_memory_bytes, self.resident_bytes(), self.policy)
        if headroom < self.policy.min_kv_bytes:
            await self._unload(slot, "idle_shutdown", why="its KV headroom is below the minimum")
            reason = (
                f"loaded, but only {headroom / 2**30:.2f} GiB is left for the KV cache "
                f"(minimum {self.policy.min_kv_bytes / 2**30:.2f} GiB)"
            )
            return LoadModelStatus(model=model_id, status="load_failed", reason=reason)
        self.on_status(f"loaded {model_id} from {slot.path}")
        return LoadModelStatus(model=model_id, status="loaded")

    async def unload(self, model_id: str) -> LoadModelStatus:
        """Unload a model; its running requests end with a ``model_unloaded`` error."""
        async with self._lock:
            slot = self.slots.get(model_id)
            if slot is None:
                return LoadModelStatus(
                    model=model_id, status="load_failed", reason=f"model {model_id!r} is not on this node"
                )
            if slot.state in LOADED:
                await self._unload(slot, "idle_shutdown", why="on the coordinator's request")
            return LoadModelStatus(model=model_id, status="unloaded")

    async def _unload(self, slot: Slot, to: SlotState, why: str) -> None:
        engine, slot.engine = slot.engine, None
        slot.move(to)
        if engine is not None:
            await asyncio.to_thread(engine.close)
        self.on_status(f"unloaded {slot.model_id} ({why})")

    async def engine_for(self, model_id: str) -> Engine | None:
        """The engine serving ``model_id``, loading it first when it is unloaded or crashed."""
        slot = self.slots.get(model_id)
        if slot is None:
            return None
        if slot.state not in LOADED or slot.engine is None:
            status = await self.load(model_id)
            if status.status != "loaded":
                slot.error = status.reason
                return None
        slot.last_used = self.clock()
        return slot.engine

    def cancel(self, request_id: str) -> None:
        for s in self.loaded():
            if s.engine is not None:
                s.engine.cancel(request_id)

    async def tick(self) -> list[str]:
        """Unload models idle for ``idle_unload_s``; returns their ids."""
        async with self._lock:
            self.refresh()
            ids = idle_unloads(self.loaded(), self.clock(), self.idle_unload_s, self._busy)
            for mid in ids:
                await self._unload(self.slots[mid], "idle_shutdown", why=f"idle for {self.idle_unload_s:.0f} s")
            return ids

    async def close(self) -> None:
        async with self._lock:
            for s in self.loaded():
                await self._unload(s, "idle_shutdown", why="node stopping")
