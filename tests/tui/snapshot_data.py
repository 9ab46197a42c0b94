"""Deterministic data for the screen snapshots, produced by the coordinator's own code.

A real ``Fleet`` and ``EventBus`` are filled with fixed nodes and settled
requests under fixed clocks, then the real ``snapshot`` view function turns
them into the JSON the dashboard receives. So the snapshots show what the
server would send, not a hand-written imitation of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from darkbloom.client.http import ChatEvent, StreamEnd, StreamStart, TextDelta
from darkbloom.protocol import Capacity, Chunk, Error, Hardware, ModelInfo, SamplingParams, SlotCapacity, Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.dashboard import snapshot
from darkbloom.server.events import DashboardHook, EventBus
from darkbloom.server.fleet import Fleet, InFlight
from darkbloom.server.gateway import InferenceJob, Timing

MONO = 10_000.0
WALL_START = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
LLAMA, QWEN = "llama-3.1-8b-4bit", "qwen2.5-coder-7b"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _fleet() -> Fleet:
    fleet = Fleet(clock=lambda: MONO)
    reg = fleet.registry
    ultra = reg.add(
        "node-ultra-01",
        (ModelInfo(id=LLAMA), ModelInfo(id=QWEN)),
        Hardware(chip="Apple M3 Ultra", memory_gb=192.0),
        MONO - 7300,
        version="0.1.0",
        capacity=Capacity(
            capacity_seq=9,
            slots=(
                SlotCapacity(
                    model=LLAMA,
                    state="running",
                    num_running=3,
                    num_waiting=1,
                    max_concurrency=8,
                    observed_decode_tps=61.4,
                    observed_prefill_tps=910.0,
                ),
                SlotCapacity(
                    model=QWEN, state="idle", max_concurrency=4, observed_decode_tps=48.2, observed_prefill_tps=720.0
                ),
            ),
            total_memory_gb=192.0,
            free_for_load_gb=88.5,
        ),
    )
    ultra.last_seen, ultra.in_flight, ultra.served = MONO - 2.0, 3, 41
    # Trust as the attestation work records it on nodes; the dashboard reads it when present.
    ultra.trust_level, ultra.trust_status, ultra.last_attestation = "hardware", "trusted", MONO - 95  # type: ignore[attr-defined]
    pro = reg.add(
        "node-pro-07",
        (ModelInfo(id=LLAMA),),
        Hardware(chip="Apple M4 Pro", memory_gb=48.0),
        MONO - 600,
        version="0.1.0",
        capacity=Capacity(
            capacity_seq=3,
            slots=(
                SlotCapacity(
                    model=LLAMA,
                    state="running",
                    num_running=1,
                    max_concurrency=4,
                    observed_decode_tps=38.9,
                    observed_prefill_tps=400.0,
                ),
            ),
            total_memory_gb=48.0,
            free_for_load_gb=12.0,
        ),
    )
    pro.last_seen, pro.in_flight, pro.served = MONO - 4.0, 1, 17
    pro.trust_level, pro.trust_status, pro.last_attestation = "software", "fenced", MONO - 400  # type: ignore[attr-defined]
    air = reg.add(
        "node-air-12", (ModelInfo(id=QWEN),), Hardware(chip="Apple M2", memory_gb=16.0), MONO - 45, version="0.1.0"
    )
    air.last_seen = MONO - 31.0
    for i, (node, model) in enumerate([("node-ultra-01", LLAMA)] * 3 + [("node-pro-07", LLAMA)]):
        fleet.inflight[f"live-{i}"] = InFlight(request_id=f"live-{i}", model=model, node_id=node)
    return fleet


# (model, node, completion tokens, outcome, how it failed)
REQUESTS: Sequence[tuple[str, str | None, int, str, Any]] = [
    (LLAMA, "node-ultra-01", 212, "completed", None),
    (QWEN, "node-ultra-01", 96, "completed", None),
    (LLAMA, "node-pro-07", 180, "completed", None),
    (LLAMA, None, 0, "failed", RequestError(429, "queue full", code="rate_limit_exceeded")),
    (LLAMA, "node-ultra-01", 64, "cancelled", None),
    (QWEN, "node-air-12", 0, "failed", Error(message="no first token", code="timeout", status=504)),
    (LLAMA, "node-ultra-01", 256, "completed", None),
    (QWEN, "node-ultra-01", 128, "completed", None),
]


async def _settle_all(bus: EventBus, wall: Clock) -> None:
    mono = Clock(0.0)
    hook = DashboardHook(bus, cost=lambda job, usage: 50 * usage.completion_tokens + 200 if usage else None, clock=mono)
    for i, (model, node, tokens, outcome, failure) in enumerate(REQUESTS):
        job = InferenceJob(
            request_id=f"chatcmpl-{i:02d}{i * 7919:06x}aa11bb22cc33dd44",
            model=model,
            messages=(),
            params=SamplingParams(),
            account_id="acct",
        )
        await hook.admit(job)
        mono.t += 0.12 + 0.01 * i
        if isinstance(failure, Error):
            hook.first_frame(job, Timing(), failure)
        elif node is not None:
            hook.first_frame(job, Timing(), Chunk(request_id=job.request_id, seq=0, text="x"))  # type: ignore[arg-type]
        mono.t += tokens / 50.0
        usage = Usage(prompt_tokens=40 + i, completion_tokens=tokens) if outcome == "completed" else None
        if isinstance(failure, RequestError):
            try:
                raise failure
            except RequestError:
                await hook.settle(job, outcome, usage, node)
        else:
            await hook.settle(job, outcome, usage, node)
        wall.t += 23.0


def dashboard_snapshot(admin: bool = True) -> dict[str, Any]:
    """The dashboard's first event: what ``/v1/admin/events`` (or the public stream) sends on connect."""
    wall = Clock(WALL_START)
    bus = EventBus(clock=wall)
    fleet = _fleet()
    asyncio.run(_settle_all(bus, wall))
    return snapshot(fleet, bus, admin=admin, now_mono=MONO, now_wall=wall.t, earnings_paid=1_234_500 if admin else None)


ANSWER = (
    "Continuous batching keeps the GPU busy by **joining new requests** to the running batch:\n\n"
    "1. each step decodes one token for every active sequence\n"
    "2. finished sequences leave, waiting ones join\n\n"
    "```python\nfor step in engine:\n    emit(step.tokens)\n```\n"
)


class ScriptedChatClient:
    """Streams a fixed answer the way ``DarkbloomClient.chat_stream`` does, for deterministic screens."""

    url = "https://coordinator.example"

    def __init__(self, models: Sequence[str] = (LLAMA, QWEN)) -> None:
        self._models = list(models)

    async def models(self) -> list[str]:
        return list(self._models)

    async def chat_stream(self, model: str, messages: Sequence[dict[str, str]], **_: Any) -> AsyncIterator[ChatEvent]:
        yield StreamStart(
            request_id="chatcmpl-0001", privacy="sealed", provider="node-ultra-01", trust_level="hardware"
        )
        for word in ANSWER.split(" "):
            yield TextDelta(word + " ")
        yield StreamEnd(
            "stop", {"prompt_tokens": 31, "completion_tokens": 57, "total_tokens": 88, "cost_micro_usd": 3050}
        )

    async def aclose(self) -> None:
        pass


def stepping_clock(step: float = 0.02) -> Clock:
    """A clock that moves ``step`` seconds each time it is read."""

    class Stepping(Clock):
        def __call__(self) -> float:
            self.t += step
            return self.t

    return Stepping(0.0)
