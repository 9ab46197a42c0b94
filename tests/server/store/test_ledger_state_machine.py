"""A hypothesis state machine over the ledger, on both backends.

Random sequences of deposits, holds, settles, releases, refunds, payouts and
invite redemptions; after every step the entries sum to zero, no consumer
balance is negative, the accounting check passes, and every consumer
balance matches a plain-Python model of the same operations.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from darkbloom.server.billing import invites, ledger
from darkbloom.server.billing.audit import audit_books
from darkbloom.server.billing.ledger import InsufficientFunds
from darkbloom.server.billing.pricing import Price, cost
from darkbloom.server.store import money, open_store
from tests.server.store.conftest import PG_URL

PRICE = Price(input_per_m=2_000_000, output_per_m=8_000_000)
SPLIT = {"provider_share_bps": 8500, "referral_share_bps": 2000, "min_charge": 100}
ACCOUNTS = ("a", "b", "c")
amounts = st.integers(min_value=1, max_value=50_000)


class LedgerMachine(RuleBasedStateMachine):
    backend = "sqlite"
    tmp: Path = Path(".")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.schema = f"sm_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            self.store = open_store(f"sqlite:///{self.tmp / (self.schema + '.db')}")
        else:
            self.store = open_store(PG_URL, schema=self.schema)
        self.expected = {a: 0 for a in ACCOUNTS}
        self.open_holds: dict[str, tuple[str, int]] = {}
        # Hold ids from a counter, not uuids: the settle and release rules draw "the k-th open hold", and that
        # must name the same hold whenever hypothesis replays the same choices (else it reports flaky data).
        self.holds_placed = 0
        self.provider_balance = 0
        self.invite = ""

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @initialize()
    def open(self) -> None:
        self.run(self.store.migrate())
        for a in ACCOUNTS:
            self.run(self.store.create_account(a, 0.0))
        self.invite = self.run(invites.create_invite(self.store, 7_000, 2, 0.0))

    def teardown(self) -> None:
        self.run(self.store.close())
        if self.backend == "postgres":

            async def drop() -> None:
                conn = await asyncpg.connect(PG_URL)
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                finally:
                    await conn.close()

            self.run(drop())
        self.loop.close()

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts)
    def deposit(self, account: str, amount: int) -> None:
        self.run(
            money.credit(
                self.store,
                account,
                amount,
                ledger.STRIPE_DEPOSIT,
                f"cs_{uuid.uuid4().hex}",
                1.0,
                source=ledger.EXTERNAL_STRIPE,
            )
        )
        self.expected[account] += amount

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts)
    def hold(self, account: str, amount: int) -> None:
        self.holds_placed += 1
        rid = f"r_{self.holds_placed:04d}"
        try:
            self.run(money.place_hold(self.store, rid, account, "m", amount, "me", 1.0))
        except InsufficientFunds:
            assert amount > self.expected[account], "refused a hold the balance covers"
            return
        assert amount <= self.expected[account], "placed a hold the balance does not cover"
        self.expected[account] -= amount
        self.open_holds[rid] = (account, amount)

    @precondition(lambda self: bool(self.open_holds))
    @rule(data=st.data(), prompt=st.integers(0, 5000), completion=st.integers(0, 5000))
    def settle(self, data: st.DataObject, prompt: int, completion: int) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open_holds)))
        account, amount = self.open_holds.pop(rid)
        s = self.run(
            money.settle_hold(
                self.store,
                rid,
                price=PRICE,
                prompt_tokens=prompt,
                completion_tokens=completion,
                node_id="n",
                now=2.0,
                **SPLIT,
            )
        )
        assert s is not None
        charged = min(cost(PRICE, prompt, completion), amount)
        assert s.split.cost == charged
        self.expected[account] += amount - charged
        self.provider_balance += s.split.provider
        # A second settle or a release of the same request changes nothing.
        assert (
            self.run(
                money.settle_hold(
                    self.store, rid, price=PRICE, prompt_tokens=1, completion_tokens=1, node_id="n", now=2.0, **SPLIT
                )
            )
            is None
        )
        assert not self.run(money.release_hold(self.store, rid, 2.0))

    @precondition(lambda self: bool(self.open_holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open_holds)))
        account, amount = self.open_holds.pop(rid)
        assert self.run(money.release_hold(self.store, rid, 3.0))
        self.expected[account] += amount

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts)
    def refund_to_card(self, account: str, amount: int) -> None:
        try:
            self.run(
                money.debit_to_external(self.store, ledger.consumer(account), amount, ledger.REFUND, "refund", 4.0)
            )
        except InsufficientFunds:
            assert amount > self.expected[account]
            return
        self.expected[account] -= amount

    @rule(amount=amounts)
    def payout(self, amount: int) -> None:
        try:
            self.run(
                money.debit_to_external(self.store, ledger.unlinked_provider("n"), amount, ledger.PAYOUT, "po", 5.0)
            )
        except InsufficientFunds:
            assert amount > self.provider_balance
            return
        self.provider_balance -= amount

    @rule(account=st.sampled_from(ACCOUNTS))
    def redeem_invite(self, account: str) -> None:
        try:
            credit = self.run(invites.redeem_invite(self.store, account, self.invite, 6.0))
        except invites.CodeError as exc:
            assert exc.status in (409, 410)
            return
        self.expected[account] += credit

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self.store, "_db") and not hasattr(self.store, "_pool"):
            return
        if getattr(self.store, "_db", None) is None and getattr(self.store, "_pool", None) is None:
            return
        assert self.run(audit_books(self.store)) == []
        for a in ACCOUNTS:
            got = self.run(money.balance(self.store, ledger.consumer(a)))
            assert got == self.expected[a] and got >= 0
        assert self.run(money.balance(self.store, ledger.unlinked_provider("n"))) == self.provider_balance


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ledger_state_machine(backend: str, tmp_path: Path) -> None:
    machine = type(f"LedgerMachine_{backend}", (LedgerMachine,), {"backend": backend, "tmp": tmp_path})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
