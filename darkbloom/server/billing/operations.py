"""Operator actions on a coordinator's database, for the ``darkbloom admin`` commands.

Each opens the database a URL names (migrating it), does one thing, and
closes it: an operator who can reach the database is the admin.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import audit_books
from darkbloom.server.billing.pricing import Price
from darkbloom.server.store import Store, StoreError, money, open_store

T = TypeVar("T")


async def with_store(db_url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(db_url)
    await store.migrate()
    try:
        return await action(store)
    finally:
        await store.close()


async def set_price(db_url: str, model: str, input_usd_per_m: str, output_usd_per_m: str) -> Price:
    """Set a model's price from dollars per million tokens."""
    price = Price(ledger.usd_to_micro(input_usd_per_m), ledger.usd_to_micro(output_usd_per_m))
    if not model.strip():
        raise StoreError("model must not be empty")

    async def act(store: Store) -> Price:
        await money.set_price(store, model.strip(), price, time.time())
        return price

    return await with_store(db_url, act)


async def list_prices(db_url: str) -> dict[str, Price]:
    return await with_store(db_url, money.list_prices)


async def grant_credit(db_url: str, account_id: str, usd: str) -> int:
    """Credit a consumer account; return its new balance in micro-USD."""
    amount = ledger.usd_to_micro(usd)
    if amount <= 0:
        raise ledger.LedgerError("credit must be positive")

    async def act(store: Store) -> int:
        if not await money.account_exists(store, account_id):
            raise StoreError(f"no account {account_id}")
        await money.credit(store, account_id, amount, ledger.ADMIN_CREDIT, f"admin:{time.time():.6f}", time.time())
        return await money.balance(store, ledger.consumer(account_id))

    return await with_store(db_url, act)


async def audit(db_url: str) -> list[str]:
    return await with_store(db_url, audit_books)


async def create_invite(db_url: str, credit_usd: str, uses: int) -> str:
    from darkbloom.server.billing.invites import create_invite as make

    amount = ledger.usd_to_micro(credit_usd)
    return await with_store(db_url, lambda store: make(store, amount, uses, time.time()))
