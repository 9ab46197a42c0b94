"""Model slots on real engines: the memory gate, slot limits, idle unload, crashes, unload mid-request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from darkbloom.node.engine.base import EngineEvent, Failed, Finished
from darkbloom.node.memory import GiB, MemoryPolicy
from darkbloom.node.models.local import describe
from darkbloom.node.slots import IllegalTransition, Slot, SlotManager, mlx_engine_factory
from darkbloom.protocol import ChatMessage, ModelInfo, SamplingParams
from tests.node.conftest import copy_model

pytestmark = pytest.mark.anyio
POLICY = MemoryPolicy()  # explicit, so the developer's environment cannot change these tests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ModelInfo]]:
    root = tmp_path_factory.mktemp("slots")
    out = {}
    for name in ("alpha", "beta", "gamma"):
        path = copy_model(tiny_model_dir, root / name)
        out[name] = (path, describe(path)[0])
    return out


def manager(models: dict[str, tuple[Path, ModelInfo]], **kw: object) -> SlotManager:
    kw.setdefault("total_memory_bytes", 64 * GiB)
    kw.setdefault("factory", mlx_engine_factory(4))
    return SlotManager(models, policy=POLICY, **kw)  # type: ignore[arg-type]


async def test_load_reports_loaded_and_the_heartbeat_shows_an_idle_slot_with_a_kv_budget(models) -> None:
    slots = manager(models)
    try:
        assert (await slots.load("alpha")).status == "loaded"
        assert (await slots.load("alpha")).status == "loaded", "loading a loaded model is a no-op"
        cap = slots.capacity(1, 64.0)
        (slot,) = cap.slots
        assert (slot.model, slot.state, slot.max_concurrency) == ("alpha", "idle", 4)
        assert slot.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4  # layers x kv heads x head dim, fp32 K and V
        assert slot.active_token_budget_max == 2048 * 4  # the headroom is huge: context x concurrency
        assert cap.free_for_load_gb == pytest.approx(57.6 - 3 - 1, abs=0.01)
        missing = await slots.load("nope")
        assert missing.status == "load_failed" and "not on this node" in missing.reason
    finally:
        await slots.close()


async def test_a_load_that_would_break_the_cap_fails_with_the_numbers(models) -> None:
    # 6 GiB of RAM: cap 4 GiB, all of it taken by the 3 GiB reserve and 1 GiB minimum KV.
    slots = manager(models, total_memory_bytes=6 * GiB)
    status = await slots.load("alpha")
    assert status.status == "load_failed"
    assert "exceed the memory cap" in status.reason and "cap 4.00 GiB" in status.reason and "3.00 GiB" in status.reason
    assert slots.slots["alpha"].state == "idle_shutdown" and slots.capacity(1, 6.0).free_for_load_gb == 0.0


async def test_a_full_node_evicts_its_least_recently_used_idle_model(models) -> None:
    clock = Clock()
    slots = manager(models, max_slots=2, clock=clock)
    try:
        await slots.load("alpha")
        clock.now += 1
        await slots.load("beta")
        clock.now += 1
        assert await slots.engine_for("alpha") is not None  # alpha is now the more recent
        clock.now += 1
        assert (await slots.load("gamma")).status == "loaded"
        states = {s.model_id: s.state for s in slots.slots.values()}
        assert states == {"alpha": "idle", "beta": "idle_shutdown", "gamma": "idle"}
        assert {s.model for s in slots.capacity(2, 64).slots if s.state == "idle"} == {"alpha", "gamma"}
    finally:
        await slots.close()


async def test_idle_models_unload_after_the_idle_time_and_reload_on_demand(models) -> None:
    clock = Clock()
    slots = manager(models, idle_unload_s=60, clock=clock)
    try:
        await slots.load("alpha")
        clock.now += 59
        assert await slots.tick() == []
        clock.now += 1
        assert await slots.tick() == ["alpha"]
        assert slots.slots["alpha"].state == "idle_shutdown"
        (cold,) = slots.capacity(3, 64).slots
        assert (cold.model, cold.state, cold.max_concurrency) == ("alpha", "idle_shutdown", 8)
        engine = await slots.engine_for("alpha")
        assert engine is not None and slots.slots["alpha"].state == "idle"
    finally:
        await slots.close()


async def test_unloading_a_busy_model_ends_its_requests_with_an_error(models) -> None:
    slots = manager(models)
    await slots.load("alpha")
    engine = await slots.engine_for("alpha")
    assert engine is not None
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()
    engine.submit(
        "r1", (ChatMessage(role="user", content="hello"),), SamplingParams(max_tokens=1500, temperature=0), events
    )
    with anyio.fail_after(10):
        while slots.capacity(4, 64).slots[0].state != "running":
            await anyio.sleep(0.01)
    assert (await slots.unload("alpha")).status == "unloaded"
    with anyio.fail_after(10):
        while not isinstance(ev := await events.get(), (Failed, Finished)):
            pass
    assert isinstance(ev, Failed) and (ev.code, ev.status) == ("model_unloaded", 503)
    assert slots.slots["alpha"].state == "idle_shutdown"


async def test_a_failed_load_is_reported_crashed_and_a_later_load_recovers(models) -> None:
    real = mlx_engine_factory(2)
    broken = {"on": True}

    def factory(path, model_id, info, kv):  # type: ignore[no-untyped-def]
        if broken["on"]:
            raise RuntimeError("weights truncated")
        return real(path, model_id, info, kv)

    slots = manager(models, factory=factory)
    try:
        status = await slots.load("alpha")
        assert (status.status, status.reason) == ("load_failed", "RuntimeError: weights truncated")
        assert [(s.model, s.state) for s in slots.capacity(5, 64).slots] == [("alpha", "crashed")]
        broken["on"] = False
        assert (await slots.load("alpha")).status == "loaded"
    finally:
        await slots.close()


def test_illegal_slot_transitions_raise() -> None:
    slot = Slot("m", Path("."), ModelInfo(id="m"))
    with pytest.raises(IllegalTransition):
        slot.move("running")  # an unloaded model cannot serve
    slot.move("reloading")
    slot.move("idle")
    slot.move("running")
    with pytest.raises(IllegalTransition):
        slot.move("reloading")
