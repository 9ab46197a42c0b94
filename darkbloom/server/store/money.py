"""Transactional postings on any ``Store``: holds, settlements, credits, prices, usage.

The arithmetic lives in ``darkbloom.server.billing.ledger`` (pure); this
module runs it inside one database transaction per operation, locking the
balance rows it touches in a fixed (sorted) order so concurrent postings
never deadlock and never overdraw.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from darkbloom.server.billing import ledger
from darkbloom.server.billing.ledger import Leg, Split
from darkbloom.server.billing.pricing import FREE, Price
from darkbloom.server.store.base import Store, Tx


async def post(tx: Tx, legs: list[Leg], reference: str, now: float) -> str:
    """Write one balanced posting inside ``tx``; return its transaction id.

    One upsert per account (in account order, so concurrent postings lock
    rows in the same order) moves each balance by its net amount and returns
    the new balance; the legs are then checked in order against the
    balances before, and all entries go in with one multi-row insert. On the
    hot path (a hold, a settlement) that is 3-6 statements, not 8-20.

    Raises:
        InsufficientFunds: a non-external balance would go below zero. The
            balances are already moved by then: the caller's transaction (or
            ``Store.run``'s savepoint) must roll back, as every caller's does.
    """
    ledger.check_balanced(legs)
    net: dict[str, int] = {}
    for leg in legs:
        net[leg.account] = net.get(leg.account, 0) + leg.amount
    before: dict[str, int] = {}
    for account in sorted(net):
        row = await tx.fetchone(
            "INSERT INTO ledger_balances (account, balance) VALUES (?, ?) ON CONFLICT (account) "
            "DO UPDATE SET balance = ledger_balances.balance + excluded.balance RETURNING balance",
            account,
            net[account],
        )
        assert row is not None
        before[account] = int(row[0]) - net[account]
    after = ledger.apply(before, legs)
    txn_id = f"txn_{uuid.uuid4().hex[:20]}"
    args: list[object] = []
    for leg, balance_after in zip(legs, after):
        args += (txn_id, leg.account, leg.type, leg.amount, balance_after, reference, now)
    await tx.execute(
        "INSERT INTO ledger_entries (txn_id, account, type, amount, balance_after, reference, created_at) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(legs)),
        *args,
    )
    return txn_id


async def balance(store: Store, account: str) -> int:
    """A ledger account's balance in micro-USD (0 when it has never been posted to)."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?", account)
    return int(row[0]) if row else 0


async def credit(
    store: Store,
    account_id: str,
    amount: int,
    entry_type: str,
    reference: str,
    now: float,
    source: str = ledger.EXTERNAL_GRANTS,
) -> str:
    """Move ``amount`` from an external source into a consumer's balance."""
    if amount <= 0:
        raise ledger.LedgerError("a credit must be positive")
    async with store.transaction() as tx:
        return await post(
            tx, [Leg(source, -amount, entry_type), Leg(ledger.consumer(account_id), amount, entry_type)], reference, now
        )


# ---- prices ---------------------------------------------------------------------


async def set_price(store: Store, model: str, price: Price, now: float) -> None:
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO prices (model, input_micro_usd_per_m, output_micro_usd_per_m, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET input_micro_usd_per_m = excluded.input_micro_usd_per_m, "
            "output_micro_usd_per_m = excluded.output_micro_usd_per_m, updated_at = excluded.updated_at",
            model,
            price.input_per_m,
            price.output_per_m,
            now,
        )


async def get_price(store: Store, model: str) -> Price:
    """The model's price; ``FREE`` when none is set."""
    return await store.run(lambda tx: price_in(tx, model))


async def price_in(tx: Tx, model: str) -> Price:
    row = await tx.fetchone("SELECT input_micro_usd_per_m, output_micro_usd_per_m FROM prices WHERE model = ?", model)
    return Price(int(row[0]), int(row[1])) if row else FREE


async def list_prices(store: Store) -> dict[str, Price]:
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT model, input_micro_usd_per_m, output_micro_usd_per_m FROM prices ORDER BY model"
        )
    return {r[0]: Price(int(r[1]), int(r[2])) for r in rows}


# ---- holds ------------------------------------------------------------------------


async def place_hold(
    store: Store, request_id: str, account_id: str, model: str, amount: int, owner: str, now: float
) -> bool:
    """Reserve ``amount`` of the consumer's balance for a request; idempotent by request id.

    Returns:
        ``True`` when a new hold was placed, ``False`` when one already existed.

    Raises:
        InsufficientFunds: the balance does not cover ``amount`` (nothing is written).
    """
    return await store.run(lambda tx: _place_hold(tx, request_id, account_id, model, amount, owner, now))


async def hold_priced(
    store: Store,
    request_id: str,
    account_id: str,
    model: str,
    amount_for: Callable[[Price], int],
    owner: str,
    now: float,
) -> tuple[Price, int, bool]:
    """Read the model's price and hold ``amount_for(price)`` in one transaction (admission's one round trip).

    ``amount_for`` must be pure: on SQLite it runs on the database thread.

    Returns:
        The price, the amount held, and whether a new hold was placed.

    Raises:
        InsufficientFunds: the balance does not cover the amount (nothing is written).
    """
    # Admission waits for the balance check, not for the fsync: a hold is a reservation that a crash
    # releases anyway, and the settlement that closes it is queued behind it and is durable.
    return await store.run(hold_priced_op(request_id, account_id, model, amount_for, owner, now), durable=False)


def hold_priced_op(
    request_id: str, account_id: str, model: str, amount_for: Callable[[Price], int], owner: str, now: float
) -> Callable[[Tx], Awaitable[tuple[Price, int, bool]]]:
    """``hold_priced`` as an op for ``Store.run`` / ``Store.submit``."""

    async def op(tx: Tx) -> tuple[Price, int, bool]:
        price = await price_in(tx, model)
        amount = amount_for(price)
        return price, amount, await _place_hold(tx, request_id, account_id, model, amount, owner, now)

    return op


def balance_op(account: str) -> Callable[[Tx], Awaitable[int]]:
    """A ledger account's balance, as an op (on SQLite it then runs in order with the ops before it)."""

    async def op(tx: Tx) -> int:
        row = await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?", account)
        return int(row[0]) if row else 0

    return op


async def _place_hold(tx: Tx, request_id: str, account_id: str, model: str, amount: int, owner: str, now: float) -> bool:
    if await tx.fetchone("SELECT state FROM holds WHERE request_id = ?", request_id):
        return False
    if amount > 0:
        await post(
            tx,
            [Leg(ledger.consumer(account_id), -amount, ledger.HOLD), Leg(ledger.HOLDS, amount, ledger.HOLD)],
            request_id,
            now,
        )
    await tx.execute(
        "INSERT INTO holds (request_id, account_id, model, amount, "
        "state, owner, created_at) VALUES (?, ?, ?, ?, 'held', ?, ?)",
        request_id,
        account_id,
        model,
        amount,
        owner,
        now,
    )
    return True


@dataclass(frozen=True, slots=True)
class Settlement:
    request_id: str
    account_id: str
    hold: int
    split: Split
    provider_account: str


async def settle_hold(
    store: Store,
    request_id: str,
    *,
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    node_id: str | None,
    provider_share_bps: int,
    referral_share_bps: int,
    min_charge: int,
    now: float,
) -> Settlement | None:
    """Turn a hold into a charge for actual tokens, crediting provider, fee and referrer; once per request.

    The charge is capped at the hold (an overage is never billed past the
    reservation). Returns ``None`` when the hold is unknown or already closed.
    """
    return await store.run(
        settle_op(
            request_id,
            price=price,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            node_id=node_id,
            provider_share_bps=provider_share_bps,
            referral_share_bps=referral_share_bps,
            min_charge=min_charge,
            now=now,
        )
    )


def settle_op(
    request_id: str,
    *,
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    node_id: str | None,
    provider_share_bps: int,
    referral_share_bps: int,
    min_charge: int,
    now: float,
) -> Callable[[Tx], Awaitable[Settlement | None]]:
    """``settle_hold`` as an op for ``Store.run`` / ``Store.submit``."""
    from darkbloom.server.billing.pricing import cost as request_cost

    async def op(tx: Tx) -> Settlement | None:
        row = await tx.fetchone(
            "SELECT account_id, model, amount, state FROM holds WHERE request_id = ?" + tx.lock, request_id
        )
        if row is None or row[3] != "held":
            return None
        account_id, model, hold = row[0], row[1], int(row[2])
        charge = min(request_cost(price, prompt_tokens, completion_tokens, min_charge), hold)
        referrer = await tx.fetchone("SELECT referrer_id FROM referrals WHERE account_id = ?", account_id)
        split = ledger.split_cost(charge, provider_share_bps, referral_share_bps, referrer is not None)
        provider_acct = await provider_account_for(tx, node_id)
        referrer_acct = ledger.consumer(referrer[0]) if referrer else None
        if hold:
            await post(
                tx,
                ledger.settlement_legs(hold, split, ledger.consumer(account_id), provider_acct, referrer_acct),
                request_id,
                now,
            )
        await tx.execute("UPDATE holds SET state = 'settled', finished_at = ? WHERE request_id = ?", now, request_id)
        await tx.execute(
            "INSERT INTO usage_records (request_id, account_id, model, "
            "prompt_tokens, completion_tokens, cost_micro_usd, "
            "provider_micro_usd, fee_micro_usd, node_id, provider_account, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            request_id,
            account_id,
            model,
            prompt_tokens,
            completion_tokens,
            split.cost,
            split.provider,
            split.fee,
            node_id,
            provider_acct,
            now,
        )
        return Settlement(request_id, account_id, hold, split, provider_acct)

    return op


async def release_hold(store: Store, request_id: str, now: float) -> bool:
    """Refund a hold in full (failure, cancel, crash); once per request. ``False`` if not open."""
    return await store.run(release_op(request_id, now))


def release_op(request_id: str, now: float) -> Callable[[Tx], Awaitable[bool]]:
    """``release_hold`` as an op for ``Store.run`` / ``Store.submit``."""

    async def op(tx: Tx) -> bool:
        row = await tx.fetchone(
            "SELECT account_id, amount, state FROM holds WHERE request_id = ?" + tx.lock, request_id
        )
        if row is None or row[2] != "held":
            return False
        account_id, amount = row[0], int(row[1])
        if amount:
            await post(
                tx,
                [Leg(ledger.HOLDS, -amount, ledger.HOLD), Leg(ledger.consumer(account_id), amount, ledger.REFUND)],
                request_id,
                now,
            )
        await tx.execute("UPDATE holds SET state = 'released', finished_at = ? WHERE request_id = ?", now, request_id)
        return True

    return op


async def stale_holds(store: Store, *, owner: str | None = None, created_before: float | None = None) -> list[str]:
    """Open holds left by ``owner`` (a previous run of this coordinator) or older than ``created_before``."""
    clauses, args = [], []  # type: list[str], list[Any]
    if owner is not None:
        clauses.append("owner = ?")
        args.append(owner)
    if created_before is not None:
        clauses.append("created_at < ?")
        args.append(created_before)
    where = " OR ".join(clauses) or "1 = 1"
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            f"SELECT request_id FROM holds WHERE state = 'held' AND ({where}) ORDER BY created_at", *args
        )
    return [r[0] for r in rows]


# ---- providers ----------------------------------------------------------------------


async def provider_account_for(tx: Tx, node_id: str | None) -> str:
    """The ledger account that earns for ``node_id``: its linked account, else an unlinked-node account."""
    if node_id:
        row = await tx.fetchone("SELECT account_id FROM node_links WHERE node_id = ?", node_id)
        if row:
            return ledger.provider(row[0])
    return ledger.unlinked_provider(node_id or "unknown")


# ---- reads for the API ------------------------------------------------------------


async def usage_rows(store: Store, account_id: str, limit: int = 100) -> list[dict[str, Any]]:
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT request_id, model, prompt_tokens, completion_tokens, cost_micro_usd, node_id, created_at "
            "FROM usage_records WHERE account_id = ? ORDER BY created_at DESC, request_id LIMIT ?",
            account_id,
            limit,
        )
    keys = ("request_id", "model", "prompt_tokens", "completion_tokens", "cost_micro_usd", "node_id", "created_at")
    return [dict(zip(keys, r)) for r in rows]


async def provider_earnings(store: Store, account_id: str, limit: int = 100) -> dict[str, Any]:
    acct = ledger.provider(account_id)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT balance FROM ledger_balances WHERE account = ?", acct)
        total = await tx.fetchone(
            "SELECT COALESCE(SUM(provider_micro_usd), 0), COUNT(*) FROM usage_records WHERE provider_account = ?", acct
        )
        rows = await tx.fetchall(
            "SELECT request_id, model, node_id, prompt_tokens, completion_tokens, "
            "provider_micro_usd, created_at FROM usage_records "
            "WHERE provider_account = ? ORDER BY created_at DESC, request_id LIMIT ?",
            acct,
            limit,
        )
        nodes = await tx.fetchall("SELECT node_id FROM node_links WHERE account_id = ? ORDER BY node_id", account_id)
    keys = ("request_id", "model", "node_id", "prompt_tokens", "completion_tokens", "earned_micro_usd", "created_at")
    return {
        "balance_micro_usd": int(row[0]) if row else 0,
        "total_earned_micro_usd": int(total[0]) if total else 0,
        "requests": int(total[1]) if total else 0,
        "nodes": [n[0] for n in nodes],
        "data": [dict(zip(keys, r)) for r in rows],
    }


async def total_provider_earnings(store: Store) -> int:
    """Everything credited to providers across the network, in micro-USD (the dashboard's "earnings paid")."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT COALESCE(SUM(provider_micro_usd), 0) FROM usage_records")
    return int(row[0]) if row else 0


async def account_exists(store: Store, account_id: str) -> bool:
    async with store.transaction() as tx:
        return await tx.fetchone("SELECT 1 FROM accounts WHERE id = ?", account_id) is not None


async def debit_to_external(
    store: Store,
    ledger_account: str,
    amount: int,
    entry_type: str,
    reference: str,
    now: float,
    sink: str = ledger.EXTERNAL_STRIPE,
) -> str:
    """Move money out of the books (a provider payout, a card refund).

    Raises:
        InsufficientFunds: the account holds less than ``amount``.
    """
    if amount <= 0:
        raise ledger.LedgerError("a debit must be positive")
    async with store.transaction() as tx:
        return await post(tx, [Leg(ledger_account, -amount, entry_type), Leg(sink, amount, entry_type)], reference, now)


async def link_node(store: Store, node_id: str, account_id: str, now: float) -> str:
    """Credit ``node_id``'s future earnings to ``account_id``; the first link wins.

    Node ids are not secrets, so a later registration under the same id with
    another account's token must not redirect the first account's earnings.

    Returns:
        The account the node earns for (``account_id``, or the one it was linked to before).
    """
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO node_links (node_id, account_id, linked_at) VALUES (?, ?, ?) ON CONFLICT (node_id) DO NOTHING",
            node_id,
            account_id,
            now,
        )
        row = await tx.fetchone("SELECT account_id FROM node_links WHERE node_id = ?", node_id)
    assert row is not None
    return str(row[0])
