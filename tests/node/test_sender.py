"""The node's frame sender: what one turn sends leaves as one message, in order, and errors reach every sender."""

from __future__ import annotations

import asyncio

import pytest

from darkbloom.node.sender import FrameSender
from darkbloom.protocol import MAX_BATCH_BYTES, Chunk, Heartbeat, decode_many, encode


def _chunk(rid: str, seq: int = 0, text: str = "tok") -> Chunk:
    return Chunk(request_id=rid, seq=seq, text=text)  # type: ignore[arg-type]


def test_frames_sent_in_one_turn_leave_as_one_message_in_order() -> None:
    async def run() -> list[bytes]:
        messages: list[bytes] = []

        async def write(data: bytes) -> None:
            messages.append(data)

        sender = FrameSender(write, batch=True)
        # Like one decode step waking every running request: each sends its token in the same turn.
        await asyncio.gather(*(sender.send(_chunk(f"r{i}")) for i in range(5)))
        await sender.send(Heartbeat())  # later, alone
        return messages

    first, second = asyncio.run(run())
    assert [f.request_id for f in decode_many(first)] == [f"r{i}" for i in range(5)]  # type: ignore[union-attr]
    assert second == encode(Heartbeat())  # a lone frame goes as itself, not as a batch of one


def test_frames_sent_during_a_slow_write_go_together_in_the_next_message() -> None:
    async def run() -> list[list[str]]:
        messages: list[list[str]] = []
        gate = asyncio.Event()

        async def write(data: bytes) -> None:
            await gate.wait()
            messages.append([f.request_id for f in decode_many(data)])  # type: ignore[union-attr]

        sender = FrameSender(write, batch=True)
        first = asyncio.ensure_future(sender.send(_chunk("a")))
        await asyncio.sleep(0.01)  # "a" is being written
        rest = [asyncio.ensure_future(sender.send(_chunk(r))) for r in ("b", "c")]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *rest)
        return messages

    assert asyncio.run(run()) == [["a"], ["b", "c"]]


def test_a_failed_write_fails_every_frame_in_it_and_the_next_send_tries_again() -> None:
    async def run() -> tuple[list[BaseException | None], list[bytes]]:
        written: list[bytes] = []
        fail = True

        async def write(data: bytes) -> None:
            if fail:
                raise ConnectionError("socket gone")
            written.append(data)

        sender = FrameSender(write, batch=True)
        results = await asyncio.gather(*(sender.send(_chunk(f"r{i}")) for i in range(3)), return_exceptions=True)
        fail = False
        await sender.send(_chunk("again"))
        return results, written  # type: ignore[return-value]

    results, written = asyncio.run(run())
    assert all(isinstance(r, ConnectionError) for r in results)
    assert written == [encode(_chunk("again"))]


def test_a_sender_cancelled_while_waiting_does_not_stop_the_others_frames() -> None:
    async def run() -> tuple[list[str], bool]:
        written: list[str] = []
        gate = asyncio.Event()

        async def write(data: bytes) -> None:
            await gate.wait()
            written.extend(f.request_id for f in decode_many(data))  # type: ignore[union-attr]

        sender = FrameSender(write, batch=True)
        a = asyncio.ensure_future(sender.send(_chunk("a")))
        b = asyncio.ensure_future(sender.send(_chunk("b")))
        await asyncio.sleep(0.01)
        a.cancel()
        gate.set()
        await b
        return written, a.cancelled()

    written, cancelled = asyncio.run(run())
    assert cancelled and written == ["a", "b"]  # "a" was already on its way: only its waiting stopped


def test_a_turn_larger_than_the_batch_limit_is_split_in_order() -> None:
    async def run() -> list[bytes]:
        messages: list[bytes] = []

        async def write(data: bytes) -> None:
            messages.append(data)

        sender = FrameSender(write, batch=True)
        big = "x" * (MAX_BATCH_BYTES // 3)
        await asyncio.gather(*(sender.send(_chunk(f"r{i}", text=big)) for i in range(5)))
        return messages

    messages = asyncio.run(run())
    assert all(len(m) <= MAX_BATCH_BYTES for m in messages) and len(messages) == 3
    assert [f.request_id for m in messages for f in decode_many(m)] == [f"r{i}" for i in range(5)]  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [1, 2])
def test_send_returns_only_once_the_frame_is_written(n: int) -> None:
    async def run() -> bool:
        gate = asyncio.Event()

        async def write(data: bytes) -> None:
            await gate.wait()

        sender = FrameSender(write, batch=True)
        sends = [asyncio.ensure_future(sender.send(_chunk(f"r{i}"))) for i in range(n)]
        await asyncio.sleep(0.01)
        waiting = not any(s.done() for s in sends)
        gate.set()
        await asyncio.gather(*sends)
        return waiting

    assert asyncio.run(run())


def test_to_a_peer_that_does_not_read_batches_every_frame_goes_alone_in_order() -> None:
    async def run() -> list[bytes]:
        messages: list[bytes] = []

        async def write(data: bytes) -> None:
            messages.append(data)

        sender = FrameSender(write)  # until the coordinator's ``registered`` says it reads batches
        await asyncio.gather(*(sender.send(_chunk(f"r{i}")) for i in range(4)))
        return messages

    assert asyncio.run(run()) == [encode(_chunk(f"r{i}")) for i in range(4)]
