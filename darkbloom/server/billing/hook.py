"""Billing as a gateway ``RequestHook``: rate limit and hold at admission, settle after.

``admit`` runs before any node sees a request: the per-consumer rate limit
(429 + Retry-After), then a reservation of the worst-case cost from the
reservation book (402 when the balance cannot cover it; see ``book.py``),
and the hold that records it in the ledger, written behind. ``settle`` turns
the hold into a charge for the tokens the node reported, or releases it on
failure or cancel; both are idempotent by request id in the store, so a
repeat is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from pathlib import Path

from darkbloom.protocol import Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.protocol.sealed import sealed_plaintext_bytes
from darkbloom.server.billing.book import ReservationBook
from darkbloom.server.billing.ledger import InsufficientFunds
from darkbloom.server.billing.ledger import consumer as ledger_consumer
from darkbloom.server.billing.pricing import Price, cost, prompt_token_bound
from darkbloom.server.billing.ratelimit import RateLimiter, RateLimits, rate_limited
from darkbloom.server.gateway import InferenceJob
from darkbloom.server.settings import Settings
from darkbloom.server.store import Store, money

log = logging.getLogger(__name__)


def insufficient_funds(needed: int, balance: int) -> RequestError:
    return RequestError(
        402,
        f"Insufficient funds: this request may cost up to {needed} micro-USD "
        f"and the balance is {balance} micro-USD; add credit and retry",
        type="insufficient_funds",
        code="insufficient_funds",
    )


class Admission(asyncio.Future[None]):
    """A hold still being written; ``expedite`` asks the store to write it now (someone waits for it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expedite: Callable[[], None]) -> None:
        super().__init__(loop=loop)
        self.expedite = expedite


class BillingHook:
    """The request hook that charges consumers and pays providers.

    Args:
        store: The coordinator's store (already open when requests arrive).
        owner: This coordinator's id, recorded on each hold so a restart can sweep its own.
        limits: Per-consumer rate limits.
        provider_share_bps: The provider's share of each charge, in basis points; the rest is the fee.
        referral_share_bps: A referrer's share of the fee, in basis points.
        min_charge: The least a priced request costs, micro-USD.
    """

    def __init__(
        self,
        store: Store,
        *,
        owner: str = "coordinator",
        limits: RateLimits | None = None,
        provider_share_bps: int = 9000,
        referral_share_bps: int = 2000,
        min_charge: int = 100,
        clock: Callable[[], float] = time.time,
        on_posting: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        hold_write_delay_s: float = 0.01,
        settle_write_delay_s: float = 0.02,
    ) -> None:
        for name, bps in (("provider share", provider_share_bps), ("referral share", referral_share_bps)):
            if not 0 <= bps <= 10_000:
                raise ValueError(f"{name} must be between 0 and 1, got {bps / 10_000}")
        self.store = store
        self.owner = owner
        self.limiter = RateLimiter(limits or RateLimits())
        self.provider_share_bps = provider_share_bps
        self.referral_share_bps = referral_share_bps
        self.min_charge = min_charge
        self.clock = clock
        self.monotonic = monotonic
        # Told the kind of each ledger posting made (``hold``, ``charge``, ``refund``): the metrics counter.
        self.on_posting = on_posting or (lambda kind: None)
        self._prices: dict[str, Price] = {}  # per admitted request: the price its hold was taken at
        self._held: dict[str, int] = {}  # per admitted request: the amount reserved for it in the book
        # Each model's price as the store last showed it; a hold re-reads it in its own transaction.
        self._known_prices: dict[str, Price] = {}
        self.book = ReservationBook()
        self._loading: dict[str, asyncio.Future[None]] = {}  # accounts being (re)loaded into the book
        self._inflight: dict[str, set[asyncio.Future[Any]]] = {}  # per account: postings submitted, not yet answered
        # Holds nobody waits for share a commit with what follows for up to this long (``Store.submit``).
        self.hold_write_delay_s = hold_write_delay_s
        # Settlements and releases likewise: the answer has gone out, nobody waits for them.
        self.settle_write_delay_s = settle_write_delay_s

    async def admit(self, job: InferenceJob) -> None:
        later = await self.admit_early(job)
        if later is not None:
            await later

    async def admit_early(self, job: InferenceJob) -> asyncio.Future[None] | None:
        """Admit ``job`` now, and return the future of its hold being written to the ledger.

        The rate limit, then a reservation of the worst-case cost from the
        reservation book: in memory, so the common case costs no database
        round trip before dispatch. The gateway dispatches meanwhile and
        checks the returned future before the consumer's answer ends (see
        ``gateway.Relay``): should the ledger refuse the hold after all (a
        price raised from another process, money spent through another
        coordinator), the request ends with that 402.

        Raises:
            RequestError: 429 over the rate limit, 402 without the money
                (refused before any node sees the request).
        """
        extra = prompt_bytes_outside_messages(job)
        prompt_bound = prompt_token_bound(job.messages, extra)
        self.limit_rate(job, prompt_bound, job.params.max_tokens)
        max_tokens, min_charge = max(0, job.params.max_tokens), self.min_charge

        def amount_for(price: Price) -> int:  # ``worst_case``, with the prompt's bound worked out once
            return cost(price, prompt_bound, max_tokens, min_charge)

        price = self._known_prices.get(job.model)
        if price is None:
            price = self._known_prices[job.model] = await money.get_price(self.store, job.model)
        amount = amount_for(price)
        account = job.account_id
        if amount:
            await self._reserve(account, amount)
        self._prices[job.request_id] = price
        self._held[job.request_id] = amount
        hold = self.store.submit(self._hold_op(job, amount_for), durable=False, defer_s=self.hold_write_delay_s)
        if amount:
            self._track(account, hold)
        admitted = Admission(asyncio.get_running_loop(), self.store.flush)
        hold.add_done_callback(lambda f: self._confirm(job, amount, f, admitted))
        return admitted

    def limit_rate(self, job: InferenceJob, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Take ``job``'s request (and tokens) from its key's rate limits.

        Raises:
            RequestError: 429 with ``Retry-After`` over a limit.
        """
        wait = self.limiter.check(job.key_id or job.account_id, self.monotonic(), input_tokens, output_tokens)
        if wait > 0:
            raise rate_limited("Rate limit exceeded for this API key; retry after the time in Retry-After", wait)

    def _track(self, account: str, posting: asyncio.Future[Any]) -> None:
        """Note a posting submitted for ``account`` until the store answers (``_load`` reads after it)."""
        inflight = self._inflight.setdefault(account, set())
        inflight.add(posting)
        posting.add_done_callback(lambda f: self._answered(account, f))

    def _answered(self, account: str, posting: asyncio.Future[Any]) -> None:
        inflight = self._inflight.get(account)
        if inflight is not None:
            inflight.discard(posting)
            if not inflight:
                del self._inflight[account]

    async def _reserve(self, account: str, amount: int) -> None:
        """Take ``amount`` from the account's spendable balance in the book, loading it first if need be.

        Raises:
            RequestError: 402 when even the database's balance cannot cover it.
        """
        fresh = False
        while (loading := self._loading.get(account)) is not None:
            await asyncio.shield(loading)
            fresh = True
        if self.book.reserve(account, amount):
            return
        spendable = self.book.spendable(account)
        if fresh and spendable is not None:  # just loaded from the database: its answer stands
            raise insufficient_funds(amount, spendable)
        # Not in the book yet, or the book says no: ask the database (credit may have come from elsewhere).
        balance = await self._load(account)
        if not self.book.reserve(account, amount):
            raise insufficient_funds(amount, balance)

    async def _load(self, account: str) -> int:
        """The account's balance, read once every hold already submitted for it is in; the book starts from it.

        Requests for the account wait meanwhile: a reservation made while the
        balance is being read would be lost when the book takes it.
        """
        loop = asyncio.get_running_loop()
        done = self._loading[account] = loop.create_future()
        try:
            inflight = self._inflight.get(account)
            if inflight:  # PostgreSQL runs ops side by side: the read must come after these postings
                self.store.flush()  # (deferred ones go now: this request waits for them)
                await asyncio.wait(list(inflight))
            balance = await self.store.submit(money.balance_op(ledger_consumer(account)))
            self.book.load(account, balance)
            return balance
        finally:
            del self._loading[account]
            done.set_result(None)

    def _hold_op(self, job: InferenceJob, amount_for: Callable[[Price], int]) -> Callable[[Any], Any]:
        rid, account, model, owner, now = job.request_id, job.account_id, job.model, self.owner, self.clock()
        return money.hold_priced_op(rid, account, model, amount_for, owner, now)

    def _confirm(self, job: InferenceJob, reserved: int, hold: asyncio.Future[tuple[Price, int, bool]], admitted: asyncio.Future[None]) -> None:
        """The ledger's answer to a hold the book admitted: square the book with it, or refuse the request."""
        account = job.account_id
        if hold.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = hold.exception()
        if exc is None:
            price, amount, placed = hold.result()
            self._known_prices[job.model] = price
            self._prices[job.request_id] = price
            if amount != reserved:  # the price changed under the book: it holds what the ledger holds
                self.book.adjust(account, reserved - amount)
                self._held[job.request_id] = amount
            if placed and amount:
                self.on_posting("hold")
            if not admitted.done():
                admitted.set_result(None)
            return
        self.book.drop(account)  # the book was wrong about this account (or the hold failed): load it afresh
        self._held.pop(job.request_id, None)
        if isinstance(exc, InsufficientFunds):
            self._known_prices.pop(job.model, None)
            exc = insufficient_funds(exc.needed, exc.balance)
        if admitted.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            admitted.cancel()
        else:
            admitted.set_exception(exc)
            admitted.exception()  # retrieved here: the gateway looks at it only while the request lasts

    async def settle(self, job: InferenceJob, outcome: str, usage: Usage | None, node_id: str | None) -> None:
        """Charge for the tokens the node reported, or release the hold; returns once the posting is queued.

        Nobody waits for the posting: the answer has gone out already. It is
        written behind, sharing a commit with whatever follows it for up to
        ``settle_write_delay_s`` (SQLite; see ``Store.submit``), and every
        later read of the ledger through ``Store.transaction`` comes after it.
        The book squares up when the store answers.
        """
        rid, account = job.request_id, job.account_id
        price, reserved = self._prices.pop(rid, None), self._held.pop(rid, 0)
        now = self.clock()
        if outcome == "completed" and usage is not None:
            if price is None:
                price = await money.get_price(self.store, job.model)
            op: Callable[[Any], Any] = money.settle_op(
                rid,
                price=price,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                node_id=node_id,
                provider_share_bps=self.provider_share_bps,
                referral_share_bps=self.referral_share_bps,
                min_charge=self.min_charge,
                now=now,
            )
        else:
            op = money.release_op(rid, now)
        posted = self.store.submit(op, defer_s=self.settle_write_delay_s)
        self._track(account, posted)
        posted.add_done_callback(lambda f: self._posted(rid, account, reserved, price, f))

    def _posted(self, rid: str, account: str, reserved: int, price: Price | None, posted: asyncio.Future[Any]) -> None:
        """The store's answer to a settlement or release: give the book back what was not spent."""
        if posted.cancelled():
            log.error("settling %s was cancelled (the store closed); its hold stays open until swept", rid)
            return
        exc = posted.exception()
        if exc is not None:
            self.book.drop(account)  # it no longer knows what the account holds: load it afresh
            log.error("settling %s failed; its hold stays open until swept", rid, exc_info=exc)
            return
        result = posted.result()
        if isinstance(result, money.Settlement):
            self.book.adjust(account, result.hold - result.split.cost)  # the unused part comes back
            if result.hold:
                self.on_posting("charge")
        elif result is True:  # released in full
            self.book.adjust(account, reserved)
            if not (price is None or price.free):
                self.on_posting("refund")

    def cost_of(self, job: InferenceJob, usage: Usage) -> int | None:
        """What a completed job is charged, for the dashboard; ``None`` if its price is not known here.

        Hooks settle in order and the dashboard's runs before this one, while
        the price taken at admission is still held.
        """
        price = self._prices.get(job.request_id)
        if price is None:
            return None
        return cost(price, usage.prompt_tokens, usage.completion_tokens, self.min_charge)

    async def sweep(self, *, own: bool = False, older_than_s: float | None = None) -> int:
        """Release open holds that no live request will settle: this coordinator's from a previous
        run (``own``, at start) and any older than ``older_than_s``. Returns how many were released."""
        created_before = self.clock() - older_than_s if older_than_s is not None else None
        ids = await money.stale_holds(self.store, owner=self.owner if own else None, created_before=created_before)
        released = 0
        for rid in ids:
            if rid in self._prices:
                continue  # still in flight here
            if await money.release_hold(self.store, rid, self.clock()):
                released += 1
                self.on_posting("refund")
        if released:
            log.warning("released %d stale hold(s) left by an earlier run or a lost request", released)
        return released


def coordinator_id(home: Path) -> str:
    """This coordinator's stable id (``<home>/coordinator_id``), recorded on its holds so a restart can sweep them."""
    path = home / "coordinator_id"
    try:
        existing = path.read_text().strip()
    except OSError:
        existing = ""
    if existing:
        return existing
    ident = f"coord_{uuid.uuid4().hex[:16]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ident + "\n")
    return ident


def billing_hook(settings: Settings, store: Store, on_posting: Callable[[str], None] | None = None) -> BillingHook:
    """The billing request hook the settings describe."""
    limits = RateLimits(
        settings.rate_limit_rps,
        settings.rate_limit_burst,
        settings.input_tokens_per_min,
        settings.output_tokens_per_min,
    )
    return BillingHook(
        store,
        limits=limits,
        provider_share_bps=settings.provider_share_bps,
        referral_share_bps=settings.referral_share_bps,
        min_charge=settings.min_charge_micro_usd,
        on_posting=on_posting,
    )


async def sweep_stale_holds(billing: BillingHook, settings: Settings) -> None:
    """Release holds no request will settle (lost to a crash or a bug), long after any request could end."""
    horizon = settings.request_timeout_s + settings.first_token_timeout_s + 60
    while True:
        await asyncio.sleep(settings.stale_hold_sweep_s)
        try:
            await billing.sweep(older_than_s=horizon)
        except Exception:
            log.exception("stale hold sweep failed")


def prompt_bytes_outside_messages(job: InferenceJob) -> int:
    """Prompt bytes the messages do not show: a raw prompt, rendered tools, a sealed body.

    Settlement is capped at the hold, so anything left out here would go
    uncharged.
    """
    extra = len((job.params.raw_prompt or "").encode()) + len((job.params.tools or "").encode())
    sealed = getattr(job, "sealed", None)
    if sealed is not None:
        extra += sealed_plaintext_bytes(sealed)  # the sealed body's exact size, known from the ciphertext
    return extra
