"""What each consumer can still spend, as this coordinator believes it: admission without a database round trip.

Admission must refuse (402) before any node works on a request the consumer
cannot pay for. Asking the database each time put a round trip (and, on
SQLite, a thread hop) in front of every first token. The book keeps, per
account, the spendable balance the database last showed this coordinator,
minus the worst case of every request admitted since; admission reserves
from it in memory, and the hold that makes the reservation durable is
written behind (``BillingHook``), in order with everything else.

The database stays the authority. The book only decides quickly:

- an account it has never seen (or dropped) is loaded from the database first;
- a request it would refuse is re-checked against the database before the
  402 (credit added from another process, say, makes it stale on the low side);
- a hold the database refuses although the book admitted it (money spent
  through another coordinator on the same database) ends that request and
  drops the account, so the next request loads afresh.

Pure bookkeeping, no IO: the hook decides when to load and what happened.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Account:
    spendable: int
    """Balance as the database last showed it, less every reservation made since."""


class ReservationBook:
    """Per-account spendable balances, reserved from and refunded to as requests come and go."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def known(self, account_id: str) -> bool:
        return account_id in self._accounts

    def spendable(self, account_id: str) -> int | None:
        acct = self._accounts.get(account_id)
        return None if acct is None else acct.spendable

    def load(self, account_id: str, balance: int) -> None:
        """The database's balance for the account, read after every hold already submitted for it."""
        self._accounts[account_id] = _Account(balance)

    def reserve(self, account_id: str, amount: int) -> bool:
        """Take ``amount`` if the account can spend it; ``False`` (nothing taken) if not, or if not loaded."""
        acct = self._accounts.get(account_id)
        if acct is None or acct.spendable < amount:
            return False
        acct.spendable -= amount
        return True

    def adjust(self, account_id: str, delta: int) -> None:
        """Money back (a refund of a hold's unused part, a released hold) or more taken (a hold that came out
        larger than reserved, because the price changed). Ignored for an account not in the book."""
        acct = self._accounts.get(account_id)
        if acct is not None:
            acct.spendable += delta

    def drop(self, account_id: str) -> None:
        """Forget the account (the database disagreed): its next request loads it afresh."""
        self._accounts.pop(account_id, None)

    def __len__(self) -> int:
        return len(self._accounts)
