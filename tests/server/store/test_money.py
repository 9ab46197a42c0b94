"""Holds, settlements, releases and the accounting check, on both backends."""

from __future__ import annotations

import asyncio
import time

import pytest

from darkbloom.protocol import ChatMessage, SamplingParams, Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.server.auth.keys import create_api_key
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import BooksError, assert_books_balance, audit_books
from darkbloom.server.billing.hook import BillingHook
from darkbloom.server.billing.pricing import Price, cost, worst_case
from darkbloom.server.billing.ratelimit import RateLimits
from darkbloom.server.gateway import InferenceJob
from darkbloom.server.store import money

PRICE = Price(input_per_m=1_000_000, output_per_m=4_000_000)
MSGS = (ChatMessage(role="user", content="hello"),)


def job(account_id: str, rid: str, max_tokens: int = 50, model: str = "m1") -> InferenceJob:
    return InferenceJob(
        request_id=rid, model=model, messages=MSGS, params=SamplingParams(max_tokens=max_tokens), account_id=account_id
    )


SETTLE = {"provider_share_bps": 9000, "referral_share_bps": 2000, "min_charge": 100}


def test_hold_settle_release_are_each_once(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            acct = rec.account_id
            await money.credit(store, acct, 10_000, ledger.ADMIN_CREDIT, "grant", 1.0)
            assert await money.place_hold(store, "r1", acct, "m1", 3_000, "me", 2.0)
            assert not await money.place_hold(store, "r1", acct, "m1", 3_000, "me", 2.0), "a repeat hold is a no-op"
            assert await money.balance(store, ledger.consumer(acct)) == 7_000
            s = await money.settle_hold(
                store, "r1", price=PRICE, prompt_tokens=100, completion_tokens=200, node_id="n1", now=3.0, **SETTLE
            )
            assert s is not None and s.split.cost == cost(PRICE, 100, 200) == 900
            assert s.split.provider + s.split.fee == 900 and s.provider_account == ledger.unlinked_provider("n1")
            again = await money.settle_hold(
                store, "r1", price=PRICE, prompt_tokens=100, completion_tokens=200, node_id="n1", now=3.0, **SETTLE
            )
            assert again is None, "settlement is idempotent by request id"
            assert not await money.release_hold(store, "r1", 4.0), "a settled hold cannot also be released"
            assert await money.balance(store, ledger.consumer(acct)) == 10_000 - 900
            assert await money.balance(store, ledger.unlinked_provider("n1")) == 810
            assert await money.balance(store, ledger.PLATFORM_FEES) == 90
            # A failure releases the whole hold, once.
            await money.place_hold(store, "r2", acct, "m1", 5_000, "me", 5.0)
            assert await money.release_hold(store, "r2", 6.0)
            assert not await money.release_hold(store, "r2", 6.0)
            assert await money.balance(store, ledger.consumer(acct)) == 9_100
            # Overage is capped at the reservation.
            await money.place_hold(store, "r3", acct, "m1", 500, "me", 7.0)
            s3 = await money.settle_hold(
                store, "r3", price=PRICE, prompt_tokens=10**6, completion_tokens=0, node_id="n1", now=8.0, **SETTLE
            )
            assert s3 is not None and s3.split.cost == 500
            rows = await money.usage_rows(store, acct)
            assert [r["request_id"] for r in rows] == ["r3", "r1"]
            assert rows[1] | {"created_at": 0} == {
                "request_id": "r1",
                "model": "m1",
                "prompt_tokens": 100,
                "completion_tokens": 200,
                "cost_micro_usd": 900,
                "node_id": "n1",
                "created_at": 0,
            }
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_referrer_earns_a_share_of_the_fee_and_linked_nodes_earn_for_their_account(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, consumer = await create_api_key(store)
            _, referrer = await create_api_key(store)
            _, prov = await create_api_key(store)
            async with store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO referrals (account_id, referrer_id, created_at) VALUES (?, ?, ?)",
                    consumer.account_id,
                    referrer.account_id,
                    0.0,
                )
            await money.link_node(store, "node-x", prov.account_id, 0.0)
            await money.credit(store, consumer.account_id, 100_000, ledger.ADMIN_CREDIT, "g", 0.0)
            await money.place_hold(store, "r", consumer.account_id, "m1", 20_000, "me", 0.0)
            s = await money.settle_hold(
                store, "r", price=PRICE, prompt_tokens=0, completion_tokens=2500, node_id="node-x", now=1.0, **SETTLE
            )
            assert s is not None and s.split.cost == 10_000
            assert await money.balance(store, ledger.provider(prov.account_id)) == 9_000
            assert await money.balance(store, ledger.consumer(referrer.account_id)) == 200  # 20% of the 1,000 fee
            assert await money.balance(store, ledger.PLATFORM_FEES) == 800
            earnings = await money.provider_earnings(store, prov.account_id)
            assert (
                earnings["balance_micro_usd"] == 9_000 and earnings["nodes"] == ["node-x"] and earnings["requests"] == 1
            )
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_accounting_check_catches_tampering(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            await money.credit(store, rec.account_id, 1_000, ledger.ADMIN_CREDIT, "g", 0.0)
            assert await audit_books(store) == []
            async with store.transaction() as tx:
                await tx.execute(
                    "UPDATE ledger_balances SET balance = balance + 1 WHERE account = ?",
                    ledger.consumer(rec.account_id),
                )
                await tx.execute(
                    "INSERT INTO usage_records VALUES ('bad', ?, 'm', 1, 1, 100, 90, 9, 'n', 'p', 0)", rec.account_id
                )
            problems = await audit_books(store)
            assert any("sum of its entries" in p for p in problems)
            assert any("payout 90 + fee 9 != cost 100" in p for p in problems)
            with pytest.raises(BooksError):
                await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_200_concurrent_requests_with_balance_for_100(store_factory) -> None:  # type: ignore[no-untyped-def]
    """One key, 200 simultaneous admissions, money for exactly 100 worst cases: at most 100 get in."""

    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            await money.set_price(store, "m1", PRICE, 0.0)
            per_request = worst_case(PRICE, MSGS, 50)
            await money.credit(store, rec.account_id, per_request * 100, ledger.ADMIN_CREDIT, "g", 0.0)
            hook = BillingHook(store, limits=RateLimits(0, 0, 0, 0))
            jobs = [job(rec.account_id, f"r{i}") for i in range(200)]
            results = await asyncio.gather(*(hook.admit(j) for j in jobs), return_exceptions=True)
            admitted = [j for j, r in zip(jobs, results) if r is None]
            refused = [r for r in results if r is not None]
            assert len(admitted) == 100
            assert all(isinstance(r, RequestError) and r.status == 402 for r in refused), refused[:3]
            assert await money.balance(store, ledger.consumer(rec.account_id)) == 0
            await asyncio.gather(*(hook.settle(j, "completed", Usage(5, 20), "n1") for j in admitted[:60]))
            await asyncio.gather(*(hook.settle(j, "failed", None, "n1") for j in admitted[60:]))
            spent = 60 * cost(PRICE, 5, 20)
            assert await money.balance(store, ledger.consumer(rec.account_id)) == per_request * 100 - spent
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_hook_refuses_with_402_and_429_and_free_models_need_no_money(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            hook = BillingHook(
                store,
                limits=RateLimits(requests_per_s=1, burst=2, input_tokens_per_min=0, output_tokens_per_min=0),
                monotonic=lambda: 100.0,
            )
            await hook.admit(job(rec.account_id, "free1", model="unpriced"))
            await hook.settle(job(rec.account_id, "free1", model="unpriced"), "completed", Usage(3, 4), "n")
            assert (await money.usage_rows(store, rec.account_id))[0]["cost_micro_usd"] == 0
            await money.set_price(store, "m1", PRICE, time.time())
            with pytest.raises(RequestError) as info:
                await hook.admit(job(rec.account_id, "p1"))
            assert info.value.status == 402 and info.value.code == "insufficient_funds"
            with pytest.raises(RequestError) as info:
                await hook.admit(job(rec.account_id, "p2"))
            assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
            assert info.value.headers["Retry-After"] == "1"
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_stale_holds_are_swept_once_by_their_owner(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            await money.credit(store, rec.account_id, 5_000, ledger.ADMIN_CREDIT, "g", 0.0)
            await money.place_hold(store, "mine", rec.account_id, "m1", 1_000, "coord-a", time.time())
            await money.place_hold(store, "theirs", rec.account_id, "m1", 1_000, "coord-b", time.time())
            hook = BillingHook(store, owner="coord-a")
            assert await hook.sweep(own=True) == 1
            assert await hook.sweep(own=True) == 0
            assert await money.balance(store, ledger.consumer(rec.account_id)) == 4_000, (
                "another live coordinator's hold stays"
            )
            assert await hook.sweep(older_than_s=-1) == 1
            assert await money.balance(store, ledger.consumer(rec.account_id)) == 5_000
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_sqlite_direct_writes_never_join_someone_elses_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Modules that write through ``store.db`` (autocommit) must not be rolled back with a failed posting."""
    from darkbloom.server.store import open_store

    async def scenario() -> None:
        store = open_store(f"sqlite:///{tmp_path / 's.db'}")
        await store.migrate()
        try:
            await store.db.execute("CREATE TABLE side (x INTEGER)")
            inside = asyncio.Event()

            async def failing_posting() -> None:
                async with store.transaction() as tx:
                    await tx.execute("INSERT INTO accounts (id, created_at) VALUES ('doomed', 0)")
                    inside.set()
                    await asyncio.sleep(0.1)
                    raise RuntimeError("posting refused")

            async def direct_write() -> None:
                await inside.wait()
                await store.db.execute("INSERT INTO side VALUES (1)")

            results = await asyncio.gather(failing_posting(), direct_write(), return_exceptions=True)
            assert isinstance(results[0], RuntimeError) and results[1] is None
            async with store.db.execute("SELECT COUNT(*) FROM side") as cur:
                assert (await cur.fetchone())[0] == 1
            async with store.db.execute("SELECT COUNT(*) FROM accounts WHERE id = 'doomed'") as cur:
                assert (await cur.fetchone())[0] == 0
        finally:
            await store.close()

    asyncio.run(scenario())
