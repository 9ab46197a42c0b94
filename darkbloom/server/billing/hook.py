"""Billing as a gateway ``RequestHook``: rate limit and hold at admission, settle after.

``admit`` runs before any node sees a request: the per-consumer rate limit
(429 + Retry-After), then a hold for the worst-case cost (402 when the
balance cannot cover it). ``settle`` turns the hold into a charge for the
tokens the node reported, or releases it on failure or cancel; both are
idempotent by request id in the store, so a repeat is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from darkbloom.protocol import Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.protocol.sealed import sealed_plaintext_bytes
from darkbloom.server.billing.ledger import InsufficientFunds
from darkbloom.server.billing.pricing import Price, cost, prompt_token_bound, worst_case
from darkbloom.server.billing.ratelimit import RateLimiter, RateLimits, retry_after_header
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
        self._prices: dict[str, Price] = {}
        self._releasing: set[asyncio.Task[bool]] = set()
        # Each model's price as the last hold read it: a free model's hold overlaps dispatch (``admit_early``).
        self._known_prices: dict[str, Price] = {}

    async def admit(self, job: InferenceJob) -> None:
        later = await self.admit_early(job)
        if later is not None:
            await later

    async def admit_early(self, job: InferenceJob) -> asyncio.Future[None] | None:
        """Admit ``job``, or start to: the rate limit here and now, then the hold.

        The hold is a database round trip. When it cannot be refused (the
        model is free, so nothing is reserved) it runs in the background and
        its future is returned: the gateway dispatches meanwhile and awaits
        it before the consumer sees anything. A hold that moves money is
        awaited here and ``None`` returned, so no node ever works on a
        request that may be refused for funds.

        Raises:
            RequestError: 429 over the rate limit, 402 without the money.
        """
        extra = prompt_bytes_outside_messages(job)
        prompt_bound = prompt_token_bound(job.messages, extra)
        wait = self.limiter.check(job.key_id or job.account_id, self.monotonic(), prompt_bound, job.params.max_tokens)
        if wait > 0:
            raise RequestError(
                429,
                "Rate limit exceeded for this API key; retry after the time in Retry-After",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry_after_header(wait)},
            )
        messages, max_tokens, min_charge = job.messages, job.params.max_tokens, self.min_charge

        def amount_for(price: Price) -> int:
            return worst_case(price, messages, max_tokens, min_charge, extra)

        # The price as the last hold read it. Should it have changed since, the hold uses the new one,
        # and one that then needs money the consumer lacks still refuses (after dispatch, once).
        cached = self._known_prices.get(job.model)
        if cached is None or amount_for(cached) != 0:
            await self._hold(job, amount_for)
            return None
        task = asyncio.get_running_loop().create_task(self._hold(job, amount_for))
        task.add_done_callback(_retrieve)
        return task

    async def _hold(self, job: InferenceJob, amount_for: Callable[[Price], int]) -> None:
        """Price and hold in one transaction: on SQLite one hop to the database thread, group-committed."""
        try:
            price, amount, placed = await money.hold_priced(
                self.store, job.request_id, job.account_id, job.model, amount_for, self.owner, self.clock()
            )
        except InsufficientFunds as exc:
            if exc.needed:  # the model is not free (any more): holds for it are awaited from now on
                self._known_prices.pop(job.model, None)
            raise insufficient_funds(exc.needed, exc.balance) from None
        except asyncio.CancelledError:
            # The hold may still commit behind us: release it (queued after it) so it does not wait for the sweep.
            task = asyncio.get_running_loop().create_task(money.release_hold(self.store, job.request_id, self.clock()))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise
        self._known_prices[job.model] = price
        if placed and amount:
            self.on_posting("hold")
        self._prices[job.request_id] = price

    async def settle(self, job: InferenceJob, outcome: str, usage: Usage | None, node_id: str | None) -> None:
        price = self._prices.pop(job.request_id, None)
        now = self.clock()
        if outcome == "completed" and usage is not None:
            if price is None:
                price = await money.get_price(self.store, job.model)
            settled = await money.settle_hold(
                self.store,
                job.request_id,
                price=price,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                node_id=node_id,
                provider_share_bps=self.provider_share_bps,
                referral_share_bps=self.referral_share_bps,
                min_charge=self.min_charge,
                now=now,
            )
            if settled is not None and settled.hold:
                self.on_posting("charge")
        elif await money.release_hold(self.store, job.request_id, now) and not (price is None or price.free):
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


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a background hold's failure as seen: the gateway reports it, or has already failed the request."""
    if not task.cancelled():
        task.exception()


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
