"""The accounting check the original runs after every scenario, on any store.

``audit_books`` returns the list of problems (empty when the books are
sound); ``assert_books_balance`` raises with all of them. Integration and e2e
tests call it after each scenario; operators can run it against a live
database (it only reads).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from darkbloom.server.billing import ledger
from darkbloom.server.store import Store, open_store


class BooksError(AssertionError):
    """The books do not balance; the message lists every problem found."""


async def audit_books(store: Store) -> list[str]:
    """Check the ledger's invariants; return a description of each violation.

    - the sum of all entries is zero;
    - every balance equals the sum of its account's entries;
    - no balance other than an ``external:`` one is below zero;
    - each entry's ``balance_after`` is the previous one plus its amount;
    - every settled request: provider payout + fee == total cost;
    - the escrow account holds exactly the open holds.
    """
    problems: list[str] = []
    async with store.transaction() as tx:
        entries = await tx.fetchall("SELECT id, txn_id, account, amount, balance_after FROM ledger_entries ORDER BY id")
        balances = dict(await tx.fetchall("SELECT account, balance FROM ledger_balances"))
        usage = await tx.fetchall(
            "SELECT request_id, cost_micro_usd, provider_micro_usd, fee_micro_usd FROM usage_records"
        )
        open_holds = await tx.fetchone("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE state = 'held'")
    total = sum(int(e[3]) for e in entries)
    if total != 0:
        problems.append(f"entries sum to {total}, not 0")
    per_txn: dict[str, int] = defaultdict(int)
    running: dict[str, int] = defaultdict(int)
    for entry_id, txn_id, account, amount, after in entries:
        per_txn[txn_id] += int(amount)
        running[account] += int(amount)
        if running[account] != int(after):
            problems.append(
                f"entry {entry_id} on {account}: balance_after {after} != previous + amount = {running[account]}"
            )
    problems += [f"transaction {t} sums to {s}, not 0" for t, s in per_txn.items() if s != 0]
    for account in set(balances) | set(running):
        stored, summed = int(balances.get(account, 0)), running.get(account, 0)
        if stored != summed:
            problems.append(f"{account}: balance {stored} != sum of its entries {summed}")
        if stored < 0 and not ledger.may_go_negative(account):
            problems.append(f"{account}: balance {stored} is below zero")
    for request_id, cost, provider_amount, fee in usage:
        if int(provider_amount) + int(fee) != int(cost):
            problems.append(f"request {request_id}: payout {provider_amount} + fee {fee} != cost {cost}")
        if min(int(cost), int(provider_amount), int(fee)) < 0:
            problems.append(f"request {request_id}: negative amounts")
    escrow = int(balances.get(ledger.HOLDS, 0))
    if open_holds is not None and escrow != int(open_holds[0]):
        problems.append(f"escrow {escrow} != open holds {open_holds[0]}")
    return problems


async def assert_books_balance(store: Store) -> None:
    """Raise ``BooksError`` listing every problem ``audit_books`` finds."""
    problems = await audit_books(store)
    if problems:
        raise BooksError("the books do not balance:\n  " + "\n  ".join(problems))


def check_database(db_url: str) -> None:
    """Open ``db_url``, audit it and close it (for tests that ran real processes)."""

    async def run() -> None:
        store = open_store(db_url)
        await store.migrate()
        try:
            await assert_books_balance(store)
        finally:
            await store.close()

    asyncio.run(run())
