"""The async fleet: a slow consumer gets 250 ms of grace, then 499 and a cancel on the node."""

from __future__ import annotations

import asyncio

from darkbloom.protocol import Cancel, Chunk, Error, Hardware, ModelInfo, SamplingParams, decode
from darkbloom.server.fleet import BUFFER_FRAMES, Fleet, NodeLink


def test_slow_consumer_gets_499_after_grace_and_the_node_a_cancel() -> None:
    async def run() -> tuple[list[object], list[object], bool]:
        fleet = Fleet()
        sent: list[object] = []

        async def send_bytes(data: bytes) -> None:
            sent.append(decode(data))

        fleet.registry.add("n", (ModelInfo(id="m"),), Hardware(memory_gb=64), fleet.clock())
        fleet.attach(NodeLink("n", send_bytes))
        flight = await fleet.dispatch("r", "m", (), SamplingParams(max_tokens=4))
        for i in range(BUFFER_FRAMES + 1):
            fleet.deliver("n", "r", Chunk(request_id="r", seq=i, text="x"))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        early = any(isinstance(f, Cancel) for f in sent)  # still within the grace
        await asyncio.sleep(0.4)
        frames = []
        while (f := flight.pop()) is not None:
            frames.append(f)
        return frames, sent, early

    frames, sent, early = asyncio.run(run())
    assert not early
    # Nothing dropped: every chunk is still there, in order, then the terminal 499.
    assert [f.seq for f in frames[:-1]] == list(range(BUFFER_FRAMES + 1))  # type: ignore[attr-defined]
    assert isinstance(frames[-1], Error) and frames[-1].status == 499
    assert [type(f).__name__ for f in sent] == ["InferenceRequest", "Cancel"]


def test_a_consumer_that_catches_up_within_the_grace_is_left_alone() -> None:
    async def run() -> list[object]:
        fleet = Fleet()
        sent: list[object] = []

        async def send_bytes(data: bytes) -> None:
            sent.append(decode(data))

        fleet.registry.add("n", (ModelInfo(id="m"),), Hardware(memory_gb=64), fleet.clock())
        fleet.attach(NodeLink("n", send_bytes))
        flight = await fleet.dispatch("r", "m", (), SamplingParams(max_tokens=4))
        for i in range(BUFFER_FRAMES + 5):
            fleet.deliver("n", "r", Chunk(request_id="r", seq=i, text="x"))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        for _ in range(100):
            flight.pop()
        await asyncio.sleep(0.3)
        return sent

    assert [type(f).__name__ for f in asyncio.run(run())] == ["InferenceRequest"]


def test_first_frame_timing_feeds_the_nodes_round_trip_and_reputation() -> None:
    async def run() -> tuple[float, float]:
        fleet = Fleet()

        async def send_bytes(data: bytes) -> None:
            pass

        fleet.registry.add("n", (ModelInfo(id="m"),), Hardware(memory_gb=64), fleet.clock())
        fleet.attach(NodeLink("n", send_bytes))
        await fleet.dispatch("r", "m", (), SamplingParams(max_tokens=4), prompt_tokens=1)
        await asyncio.sleep(0.05)
        fleet.deliver("n", "r", Chunk(request_id="r", seq=0, text="x"))  # type: ignore[arg-type]
        node = fleet.registry.nodes["n"]
        return node.rtt_s, node.reputation.ttft_s

    rtt, ttft = asyncio.run(run())
    assert ttft >= 0.05 and rtt >= 0.04  # a 1-token prompt explains almost none of the 50 ms
