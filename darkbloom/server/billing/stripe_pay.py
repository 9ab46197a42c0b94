"""Stripe: deposits through Checkout Sessions, a verified webhook, provider payouts through Connect.

The real ``stripe`` SDK does every call; ``stripe_api_base`` points it at
another host (tests run a local stand-in speaking Stripe's HTTP API). Amounts
cross the boundary in cents (Stripe) and live in the books as micro-USD.

- Deposit: a Checkout Session records a pending deposit; the webhook's
  ``checkout.session.completed`` (paid) credits it, once per event id and
  once per session, in the same transaction that records the event.
- Payout: the provider's earnings go to their connected account by a
  transfer; the ledger debit and the payout record are written first, and a
  transfer Stripe refuses is reversed, so the books never claim money that
  did not move (the payout id is the idempotency key for retries).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import stripe

from darkbloom.server.billing import ledger
from darkbloom.server.billing.ledger import Leg
from darkbloom.server.settings import Settings
from darkbloom.server.store import Store, money

MICRO_PER_CENT = 10_000


class PaymentError(Exception):
    """A payment action refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def client(settings: Settings) -> stripe.StripeClient:
    """A Stripe client for the configured key (and base URL, when set)."""
    if not settings.stripe_api_key:
        raise PaymentError(
            503, "payments are not configured on this coordinator (set DARKBLOOM_STRIPE_API_KEY)", "payments_disabled"
        )
    bases: dict[str, str] = {}
    if settings.stripe_api_base:
        bases = {"api": settings.stripe_api_base, "connect": settings.stripe_api_base}
    return stripe.StripeClient(settings.stripe_api_key, base_addresses=bases or None, max_network_retries=1)  # type: ignore[arg-type]


async def create_deposit(
    store: Store, settings: Settings, account_id: str, amount_micro: int, base_url: str
) -> dict[str, Any]:
    """Open a Checkout Session for ``amount_micro`` (whole cents, at least the minimum); record it pending."""
    if amount_micro < settings.min_deposit_micro_usd:
        raise PaymentError(
            400, f"the minimum deposit is {settings.min_deposit_micro_usd / 1e6:.2f} USD", "amount_too_small"
        )
    if amount_micro % MICRO_PER_CENT:
        raise PaymentError(400, "deposits are whole cents", "invalid_amount")
    sc = client(settings)
    params = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": amount_micro // MICRO_PER_CENT,
                    "product_data": {"name": "Darkbloom credit"},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": account_id,
        "metadata": {"account_id": account_id},
        "success_url": f"{base_url}/v1/balance",
        "cancel_url": f"{base_url}/v1/balance",
    }
    try:
        session = await asyncio.to_thread(sc.v1.checkout.sessions.create, params)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise PaymentError(
            502, f"Stripe refused the checkout session: {exc.user_message or exc}", "stripe_error"
        ) from None
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO deposits (session_id, account_id, amount_micro_usd, "
            "status, created_at) VALUES (?, ?, ?, 'pending', ?)",
            session.id,
            account_id,
            amount_micro,
            time.time(),
        )
    return {"session_id": session.id, "url": session.url, "amount_micro_usd": amount_micro}


async def handle_webhook(store: Store, settings: Settings, payload: bytes, signature: str | None) -> str:
    """Verify and apply a Stripe event; return what happened (``credited``, ``duplicate``, ``ignored``).

    Raises:
        PaymentError: 400 for a missing or bad signature or a malformed payload.
    """
    if not settings.stripe_webhook_secret:
        raise PaymentError(
            503, "webhooks are not configured (set DARKBLOOM_STRIPE_WEBHOOK_SECRET)", "payments_disabled"
        )
    try:
        stripe.Webhook.construct_event(payload, signature or "", settings.stripe_webhook_secret)
    except stripe.SignatureVerificationError:
        raise PaymentError(400, "bad Stripe signature", "invalid_signature") from None
    except (ValueError, KeyError):
        raise PaymentError(400, "malformed event payload", "invalid_payload") from None
    data = json.loads(payload)
    event_id, event_type = str(data.get("id", "")), str(data.get("type", ""))
    if not event_id:
        raise PaymentError(400, "event without an id", "invalid_payload")
    obj = (data.get("data") or {}).get("object") or {}
    now = time.time()
    async with store.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM stripe_events WHERE event_id = ?", event_id):
            return "duplicate"
        await tx.execute(
            "INSERT INTO stripe_events (event_id, type, received_at) VALUES (?, ?, ?)", event_id, event_type, now
        )
        if event_type != "checkout.session.completed" or obj.get("payment_status") != "paid":
            return "ignored"
        row = await tx.fetchone(
            "SELECT account_id, amount_micro_usd, status FROM deposits WHERE session_id = ?" + tx.lock,
            str(obj.get("id")),
        )
        if row is None or row[2] != "pending":
            return "ignored"  # not ours, or this session was credited by an earlier event
        account_id = str(row[0])
        amount = int(obj.get("amount_total") or 0) * MICRO_PER_CENT
        if amount <= 0:
            return "ignored"
        legs = [
            Leg(ledger.EXTERNAL_STRIPE, -amount, ledger.STRIPE_DEPOSIT),
            Leg(ledger.consumer(account_id), amount, ledger.STRIPE_DEPOSIT),
        ]
        await money.post(tx, legs, f"stripe:{obj.get('id')}", now)
        await tx.execute(
            "UPDATE deposits SET status = 'completed', completed_at = ?, amount_micro_usd = ? WHERE session_id = ?",
            now,
            amount,
            str(obj.get("id")),
        )
    return "credited"


async def connect_account(store: Store, settings: Settings, account_id: str, base_url: str) -> dict[str, Any]:
    """The provider's Stripe Express account (created on first ask) and an onboarding link."""
    sc = client(settings)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT stripe_account FROM connect_accounts WHERE account_id = ?", account_id)
    try:
        if row is None:
            acct = await asyncio.to_thread(
                sc.v1.accounts.create, {"type": "express", "metadata": {"account_id": account_id}}
            )  # type: ignore[arg-type]
            stripe_account = acct.id
            async with store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO connect_accounts (account_id, stripe_account, created_at) VALUES (?, ?, ?)",
                    account_id,
                    stripe_account,
                    time.time(),
                )
        else:
            stripe_account = str(row[0])
        link = await asyncio.to_thread(
            sc.v1.account_links.create,
            {
                "account": stripe_account,
                "type": "account_onboarding",
                "refresh_url": f"{base_url}/v1/provider/earnings",
                "return_url": f"{base_url}/v1/provider/earnings",
            },  # type: ignore[arg-type]
        )
    except stripe.StripeError as exc:
        raise PaymentError(502, f"Stripe refused: {exc.user_message or exc}", "stripe_error") from None
    return {"stripe_account": stripe_account, "onboarding_url": link.url}


@dataclass(frozen=True, slots=True)
class Payout:
    payout_id: str
    amount_micro_usd: int
    transfer_id: str


async def payout(store: Store, settings: Settings, account_id: str, amount_micro: int | None = None) -> Payout:
    """Transfer a provider's earnings (all whole cents of them by default) to their connected account.

    Raises:
        PaymentError: no connected account (409), under the minimum or over the balance (400), Stripe refused (502).
    """
    sc = client(settings)
    acct = ledger.provider(account_id)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT stripe_account FROM connect_accounts WHERE account_id = ?", account_id)
    if row is None:
        raise PaymentError(409, "connect a Stripe account first (POST /v1/provider/connect)", "no_connected_account")
    available = await money.balance(store, acct)
    amount = available if amount_micro is None else amount_micro
    amount -= amount % MICRO_PER_CENT
    if amount < settings.min_payout_micro_usd:
        raise PaymentError(
            400,
            f"the minimum payout is {settings.min_payout_micro_usd / 1e6:.2f} "
            f"USD; {amount} micro-USD requested of {available} earned",
            "amount_too_small",
        )
    payout_id = f"po_{uuid.uuid4().hex[:20]}"
    now = time.time()
    async with store.transaction() as tx:
        try:
            await money.post(
                tx,
                [Leg(acct, -amount, ledger.PAYOUT), Leg(ledger.EXTERNAL_STRIPE, amount, ledger.PAYOUT)],
                payout_id,
                now,
            )
        except ledger.InsufficientFunds:
            raise PaymentError(400, f"only {available} micro-USD earned", "insufficient_funds") from None
        await tx.execute(
            "INSERT INTO payouts (id, account_id, amount_micro_usd, status, created_at) VALUES (?, ?, ?, 'pending', ?)",
            payout_id,
            account_id,
            amount,
            now,
        )
    try:
        transfer = await asyncio.to_thread(
            sc.v1.transfers.create,
            {
                "amount": amount // MICRO_PER_CENT,
                "currency": "usd",
                "destination": str(row[0]),
                "metadata": {"payout_id": payout_id},
            },  # type: ignore[arg-type]
            {"idempotency_key": payout_id},
        )
    except stripe.StripeError as exc:
        async with store.transaction() as tx:
            await money.post(
                tx,
                [Leg(ledger.EXTERNAL_STRIPE, -amount, ledger.PAYOUT), Leg(acct, amount, ledger.REFUND)],
                payout_id,
                time.time(),
            )
            await tx.execute("UPDATE payouts SET status = 'failed' WHERE id = ?", payout_id)
        raise PaymentError(502, f"Stripe refused the transfer: {exc.user_message or exc}", "stripe_error") from None
    async with store.transaction() as tx:
        await tx.execute("UPDATE payouts SET status = 'paid', transfer_id = ? WHERE id = ?", transfer.id, payout_id)
    return Payout(payout_id, amount, transfer.id)


async def list_payouts(store: Store, account_id: str) -> list[dict[str, Any]]:
    async with store.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT id, amount_micro_usd, transfer_id, status, created_at "
            "FROM payouts WHERE account_id = ? ORDER BY created_at DESC",
            account_id,
        )
    return [dict(zip(("id", "amount_micro_usd", "transfer_id", "status", "created_at"), r)) for r in rows]
