"""Per-model capacity from the fleet registry, and the service-time estimate behind the wait."""

from __future__ import annotations

import pytest

from darkbloom.protocol import Capacity, Hardware, ModelInfo, SlotCapacity
from darkbloom.server.api.models import ServiceTimes, model_capacity
from darkbloom.server.gateway import InferenceJob
from darkbloom.server.routing.registry import Registry


def _registry(*caps: int) -> Registry:
    reg = Registry()
    for i, cap in enumerate(caps):
        slots = (SlotCapacity(model="m", max_concurrency=cap),)
        reg.add(f"n{i}", (ModelInfo(id="m"),), Hardware(), 0.0, capacity=Capacity(capacity_seq=1, slots=slots))
    return reg


def test_free_slots_mean_no_wait() -> None:
    reg = _registry(2, 4)
    reg.nodes["n0"].in_flight = 2
    cap = model_capacity(reg, "m", service_s=3.0)
    assert (cap["nodes"], cap["slots"], cap["busy_slots"], cap["free_slots"], cap["queued"]) == (
        ["n0", "n1"],
        6,
        2,
        4,
        0,
    )
    assert cap["estimated_wait_ms"] == 0


def test_a_full_fleet_waits_rounds_of_service_time() -> None:
    reg = _registry(2, 2)
    reg.nodes["n0"].in_flight = 5  # 3 beyond its cap, waiting in its engine
    reg.nodes["n1"].in_flight = 2
    cap = model_capacity(reg, "m", service_s=1.5)
    assert (cap["busy_slots"], cap["free_slots"], cap["queued"]) == (4, 0, 3)
    assert cap["estimated_wait_ms"] == 1500  # ceil((3 + 1) / 4) rounds of 1.5 s
    assert model_capacity(reg, "m", service_s=None)["estimated_wait_ms"] is None  # nothing learned yet


def test_unknown_model_has_no_capacity() -> None:
    cap = model_capacity(_registry(2), "other", service_s=1.0)
    assert (cap["nodes"], cap["slots"], cap["free_slots"], cap["estimated_wait_ms"]) == ([], 0, 0, None)


@pytest.mark.anyio
async def test_service_times_learn_from_completed_requests_only() -> None:
    now = [0.0]
    times = ServiceTimes(clock=lambda: now[0])

    def job(rid: str) -> InferenceJob:
        return InferenceJob(request_id=rid, model="m", messages=(), params=None, account_id="a")  # type: ignore[arg-type]

    await times.admit(job("a"))
    now[0] = 2.0
    await times.settle(job("a"), "completed", None, "n0")
    assert times.seconds == {"m": 2.0}
    await times.admit(job("b"))
    now[0] = 100.0
    await times.settle(job("b"), "cancelled", None, "n0")
    assert times.seconds == {"m": 2.0}
    await times.admit(job("c"))
    now[0] = 104.0
    await times.settle(job("c"), "completed", None, "n0")
    assert times.seconds["m"] == pytest.approx(0.8 * 2.0 + 0.2 * 4.0)
