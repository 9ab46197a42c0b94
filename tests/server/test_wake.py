"""``Wake`` behaves as ``asyncio.Event`` where the relay relies on it."""

from __future__ import annotations

import asyncio

from darkbloom.server.wake import Wake


def test_wake_releases_every_waiter_and_a_cancelled_one_leaves_the_rest_waiting() -> None:
    async def scenario() -> None:
        wake = Wake()
        a = asyncio.create_task(wake.wait())
        b = asyncio.create_task(wake.wait())
        c = asyncio.create_task(wake.wait())
        await asyncio.sleep(0)
        assert not any(t.done() for t in (a, b, c))
        c.cancel()
        await asyncio.sleep(0)
        assert c.cancelled() and not a.done()
        wake.set()
        assert await asyncio.wait_for(asyncio.gather(a, b), 1) == [True, True]
        assert wake.is_set() and await wake.wait()  # set: returns at once
        wake.clear()
        late = asyncio.create_task(wake.wait())
        await asyncio.sleep(0.01)
        assert not late.done()
        wake.set()
        assert await asyncio.wait_for(late, 1)

    asyncio.run(scenario())


def test_wait_for_answers_false_when_time_runs_out_and_true_when_set() -> None:
    async def scenario() -> None:
        wake = Wake()
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await wake.wait_for(0.05) is False
        assert loop.time() - start >= 0.045
        assert not wake._waiters  # nothing left behind to be woken later
        waiting = asyncio.create_task(wake.wait_for(5))
        await asyncio.sleep(0.01)
        wake.set()
        assert await asyncio.wait_for(waiting, 1) is True
        assert await wake.wait_for(0) is True  # already set: at once
        wake.clear()
        cancelled = asyncio.create_task(wake.wait_for(5))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert cancelled.cancelled() and not wake._waiters

    asyncio.run(scenario())


def test_deadline_fires_once_after_its_last_move_and_never_once_cleared() -> None:
    from darkbloom.server.wake import Deadline

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        deadline = Deadline(lambda: fired.append(loop.time()))
        start = loop.time()
        deadline.set(loop, 0.05)
        await asyncio.sleep(0.03)
        deadline.set(loop, 0.05)  # moved: the first timer must re-arm, not fire
        await asyncio.sleep(0.04)
        assert fired == [] and deadline.armed
        await asyncio.sleep(0.05)
        assert len(fired) == 1 and fired[0] - start >= 0.08 and not deadline.armed
        deadline.set(loop, 0.02)
        deadline.clear()
        await asyncio.sleep(0.05)
        assert len(fired) == 1  # cleared: the pending timer lapsed

    asyncio.run(scenario())
