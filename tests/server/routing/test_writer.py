"""The node writer: control frames overtake queued data frames; a stuck write drops the socket."""

from __future__ import annotations

import asyncio

from darkbloom.protocol import MAX_BATCH_BYTES, Cancel, ChatMessage, InferenceRequest, LoadModel, TrustStatus, decode, decode_many
from darkbloom.server.writer import NodeWriter, WriterClosed, WriterLimits


def _req(i: int) -> InferenceRequest:
    return InferenceRequest(request_id=f"r{i}", model="m")  # type: ignore[arg-type]


def test_control_frames_overtake_queued_data_frames() -> None:
    async def run() -> list[str]:
        sent: list[str] = []
        gate = asyncio.Event()

        async def send_bytes(data: bytes) -> None:
            await gate.wait()  # the socket is slow: the first write holds everything behind it
            f = decode(data)
            sent.append(f"{type(f).__name__}:{getattr(f, 'request_id', '') or getattr(f, 'model', '') or f.status}")  # type: ignore[union-attr]

        w = NodeWriter(send_bytes)
        w.start()
        for i in range(4):
            await w.send(_req(i))
        await asyncio.sleep(0.01)  # r0 is now being written
        await w.send(Cancel(request_id="r0"))  # type: ignore[arg-type]
        await w.send(TrustStatus(trust_level="hardware", status="fenced"))
        await w.send(LoadModel(model="big"))
        assert w.pending() == (3, 3)
        gate.set()
        while len(sent) < 7:
            await asyncio.sleep(0.001)
        await w.close()
        return sent

    sent = asyncio.run(run())
    # r0 was in progress (never pre-empted); then every control frame in order; then the data in order.
    assert sent == [
        "InferenceRequest:r0",
        "Cancel:r0",
        "TrustStatus:fenced",
        "LoadModel:big",
        "InferenceRequest:r1",
        "InferenceRequest:r2",
        "InferenceRequest:r3",
    ]


def test_a_cancel_for_a_queued_request_takes_it_out_and_neither_is_sent() -> None:
    async def run() -> list[str]:
        sent: list[str] = []
        gate = asyncio.Event()

        async def send_bytes(data: bytes) -> None:
            await gate.wait()
            f = decode(data)
            sent.append(f"{type(f).__name__}:{getattr(f, 'request_id', '')}")

        w = NodeWriter(send_bytes)
        w.start()
        for i in range(4):
            await w.send(_req(i))
        await asyncio.sleep(0.01)  # r0 is being written; r1..r3 wait
        await w.send(Cancel(request_id="r2"))  # type: ignore[arg-type]
        assert w.pending() == (0, 2)
        gate.set()
        while len(sent) < 3:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        await w.close()
        return sent

    # Had the cancel gone out, it would have reached the node before r2 itself.
    assert asyncio.run(run()) == ["InferenceRequest:r0", "InferenceRequest:r1", "InferenceRequest:r3"]


def test_a_stuck_write_stops_the_writer_and_reports_it() -> None:
    async def run() -> tuple[list[str], bool]:
        reasons: list[str] = []

        async def never(data: bytes) -> None:
            await asyncio.Event().wait()

        w = NodeWriter(never, on_stuck=reasons.append, limits=WriterLimits(control_timeout_s=0.05, data_min_timeout_s=0.05))
        w.start()
        await w.send(Cancel(request_id="r"))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        try:
            await w.send(_req(1))
        except WriterClosed:
            refused = True
        else:
            refused = False
        await w.close()
        return reasons, refused

    reasons, refused = asyncio.run(run())
    assert reasons and "stuck" in reasons[0]
    assert refused


def test_data_write_timeout_scales_with_size() -> None:
    lim = WriterLimits()
    assert lim.data_timeout(1000) == 5.0
    assert lim.data_timeout(20 * 1024 * 1024) == 10.0
    assert lim.data_timeout(500 * 1024 * 1024) == 30.0


def _names(data: bytes) -> list[str]:
    return [f"{type(f).__name__}:{getattr(f, 'request_id', '') or getattr(f, 'status', '')}" for f in decode_many(data)]


def test_a_batching_writer_sends_everything_queued_as_one_message_control_first() -> None:
    async def run() -> list[list[str]]:
        messages: list[list[str]] = []
        gate = asyncio.Event()

        async def send_bytes(data: bytes) -> None:
            await gate.wait()
            messages.append(_names(data))

        w = NodeWriter(send_bytes, batch=True)
        w.start()
        await w.send(_req(0))
        await asyncio.sleep(0.01)  # r0 is being written, alone; the rest queue behind it
        for i in range(1, 4):
            await w.send(_req(i))
        await w.send(Cancel(request_id="r2"))  # type: ignore[arg-type]  # still queued: taken out
        await w.send(Cancel(request_id="r0"))  # type: ignore[arg-type]
        await w.send(TrustStatus(trust_level="software", status="fenced"))
        gate.set()
        while len(messages) < 2:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        await w.close()
        return messages

    assert asyncio.run(run()) == [
        ["InferenceRequest:r0"],
        ["Cancel:r0", "TrustStatus:fenced", "InferenceRequest:r1", "InferenceRequest:r3"],
    ]


def test_a_batch_never_exceeds_the_batch_size_limit() -> None:
    big = "x" * (MAX_BATCH_BYTES // 3)

    async def run() -> list[bytes]:
        messages: list[bytes] = []
        gate = asyncio.Event()

        async def send_bytes(data: bytes) -> None:
            await gate.wait()
            messages.append(data)

        w = NodeWriter(send_bytes, batch=True)
        for i in range(7):
            await w.send(InferenceRequest(request_id=f"r{i}", model="m", messages=(ChatMessage(role="user", content=big),)))  # type: ignore[arg-type]
        w.start()
        gate.set()
        while sum(len(decode_many(m)) for m in messages) < 7:
            await asyncio.sleep(0.001)
        await w.close()
        return messages

    messages = asyncio.run(run())
    assert [len(decode_many(m)) for m in messages] == [2, 2, 2, 1]  # three would pass the limit
    assert all(len(m) <= MAX_BATCH_BYTES for m in messages)
    assert [f.request_id for m in messages for f in decode_many(m)] == [f"r{i}" for i in range(7)]  # type: ignore[union-attr]
