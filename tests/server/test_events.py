"""The dashboard event bus and its request hook: windows, fan-out, what a settled request records."""

from __future__ import annotations

import pytest

from darkbloom.protocol import Chunk, Error, SamplingParams, Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.server.events import BUCKET_S, MAX_MODEL_WINDOWS, SUBSCRIBER_QUEUE, DashboardHook, EventBus
from darkbloom.server.gateway import InferenceJob, StreamTap, Timing


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def job(rid: str = "r1", model: str = "m1") -> InferenceJob:
    return InferenceJob(request_id=rid, model=model, messages=(), params=SamplingParams(), account_id="a")


def record(model: str = "m1", status: int = 200, tokens: int = 10) -> dict:  # type: ignore[type-arg]
    return {"id": "x", "model": model, "node": "n1", "status": status, "completion_tokens": tokens, "prompt_tokens": 2}


def test_windows_bucket_by_ten_seconds_and_slide() -> None:
    clock = Clock(1000.0)
    bus = EventBus(clock)
    bus.request_finished(record(), 1.0)
    clock.t += BUCKET_S
    bus.request_finished(record(status=429), 0.0)
    bus.request_finished(record(status=504), 0.0)
    window = bus.models["m1"]
    assert window.series(clock.t, "requests", points=3) == [0, 1, 2]
    assert window.series(clock.t, "rejected", points=3) == [0, 0, 1]
    assert window.series(clock.t, "timeouts", points=3) == [0, 0, 1]
    clock.t += 29 * BUCKET_S  # the first bucket has slid out of a five-minute window
    totals = window.totals(clock.t, 300)
    assert (totals.requests, totals.rejected, totals.timeouts) == (2, 1, 1)
    assert bus.totals.requests == 3 and bus.totals.completed == 1 and bus.totals.failed == 2


def test_a_slow_subscriber_loses_its_oldest_events_not_memory() -> None:
    bus = EventBus(Clock())
    with bus.subscribe() as sub:
        for i in range(SUBSCRIBER_QUEUE + 5):
            bus.node_event("heartbeat", f"n{i}")
        assert sub.queue.qsize() == SUBSCRIBER_QUEUE and sub.dropped == 5
        assert sub.queue.get_nowait()["node"] == "n5"
    assert not bus.subscribers


def test_model_windows_are_bounded_whatever_names_consumers_try() -> None:
    bus = EventBus(Clock())
    for i in range(MAX_MODEL_WINDOWS + 10):
        bus.request_finished(record(model=f"made-up-{i}", status=404), 0.0)
    assert len(bus.models) == MAX_MODEL_WINDOWS
    assert "made-up-0" not in bus.models and f"made-up-{MAX_MODEL_WINDOWS + 9}" in bus.models


@pytest.mark.anyio
async def test_hook_records_ttft_tokens_per_second_and_cost() -> None:
    mono = Clock(50.0)
    bus = EventBus(Clock(1000.0))
    hook = DashboardHook(bus, cost=lambda j, u: 7 * (u.completion_tokens if u else 0), clock=mono)
    assert isinstance(hook, StreamTap)  # the gateway calls first_frame only on stream taps
    await hook.admit(job())
    mono.t += 0.25
    hook.first_frame(job(), Timing(), Chunk(request_id="r1", seq=0, text="x"))  # type: ignore[arg-type]
    mono.t += 2.0
    await hook.settle(job(), "completed", Usage(prompt_tokens=5, completion_tokens=41), "n1")
    rec = bus.recent[-1]
    assert rec["ttft_ms"] == 250.0 and rec["tokens_per_s"] == 20.0  # 40 tokens after the first, in 2 s
    assert rec["status"] == 200 and rec["node"] == "n1" and rec["cost_micro_usd"] == 287
    assert rec["privacy"] == "coordinator-visible" and rec["duration_ms"] == 2250.0
    assert bus.node_tps["n1"] == 20.0


@pytest.mark.anyio
async def test_hook_status_comes_from_the_refusal_or_the_error_frame() -> None:
    bus = EventBus(Clock())
    hook = DashboardHook(bus)
    await hook.admit(job("a"))
    try:
        raise RequestError(429, "slow down", code="rate_limit_exceeded")
    except RequestError:
        await hook.settle(job("a"), "failed", None, None)  # as the gateway does, inside its except block
    await hook.admit(job("b"))
    hook.first_frame(job("b"), Timing(), Error(message="late", code="timeout", status=504, request_id="b"))  # type: ignore[arg-type]
    await hook.settle(job("b"), "failed", None, "n1")
    await hook.admit(job("c"))
    await hook.settle(job("c"), "cancelled", None, "n1")
    assert [(r["id"], r["status"], r["ttft_ms"]) for r in bus.recent] == [
        ("a", 429, None),
        ("b", 504, None),
        ("c", 499, None),
    ]
    assert bus.models["m1"].buckets[-1].rejected == 1 and bus.models["m1"].buckets[-1].timeouts == 1
