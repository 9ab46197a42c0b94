"""Double-entry ledger arithmetic, pure: integer micro-USD, no IO.

Every posting is a list of legs whose amounts sum to zero. Ledger accounts
are strings with a kind prefix:

- ``consumer:<account>``   spendable consumer balance (never below zero)
- ``provider:<account>``   a provider's earnings, ``provider:node:<node>`` when the node is not linked
- ``platform:fees``        the platform's fee income
- ``platform:holds``       escrow for in-flight requests (equals the sum of open holds)
- ``external:stripe``      Stripe clearing: money that came in by card or left by transfer
- ``external:grants``      credit the operator gave away (admin credit, invites)

``external:`` accounts are the world outside the books and may go negative;
every other balance may not.
"""

from __future__ import annotations

from dataclasses import dataclass

MICRO_PER_USD = 1_000_000

PLATFORM_FEES = "platform:fees"
HOLDS = "platform:holds"
EXTERNAL_STRIPE = "external:stripe"
EXTERNAL_GRANTS = "external:grants"

# Entry types (the original's, plus hold/earning for our explicit escrow legs).
HOLD = "hold"
REFUND = "refund"
EARNING = "earning"
PLATFORM_FEE = "platform_fee"
REFERRAL_REWARD = "referral_reward"
STRIPE_DEPOSIT = "stripe_deposit"
INVITE_CREDIT = "invite_credit"
ADMIN_CREDIT = "admin_credit"
PAYOUT = "payout"


class LedgerError(ValueError):
    """A posting that would break the books (unbalanced, or a balance below zero)."""


class InsufficientFunds(LedgerError):
    """A posting would take a non-external balance below zero."""

    def __init__(self, account: str, balance: int, needed: int) -> None:
        super().__init__(f"{account} has {balance} micro-USD, needs {needed}")
        self.account = account
        self.balance = balance
        self.needed = needed


def consumer(account_id: str) -> str:
    return f"consumer:{account_id}"


def provider(account_id: str) -> str:
    return f"provider:{account_id}"


def unlinked_provider(node_id: str) -> str:
    return f"provider:node:{node_id}"


def may_go_negative(account: str) -> bool:
    return account.startswith("external:")


def usd_to_micro(usd: str | float) -> int:
    """Dollars (as typed on a command line) to integer micro-USD, rounding to the nearest micro-dollar.

    Raises:
        LedgerError: not a finite, non-negative amount.
    """
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(str(usd))
    except InvalidOperation:
        raise LedgerError(f"not an amount of dollars: {usd!r}") from None
    if not value.is_finite() or value < 0:
        raise LedgerError(f"amount must be a non-negative number of dollars, got {usd!r}")
    return int((value * MICRO_PER_USD).to_integral_value())


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a posting: ``amount`` (signed micro-USD) to ``account``."""

    account: str
    amount: int
    type: str


def check_balanced(legs: list[Leg]) -> None:
    """Raise unless the legs are integers that sum to zero."""
    if not legs:
        raise LedgerError("a posting needs at least one leg")
    for leg in legs:
        if not isinstance(leg.amount, int) or isinstance(leg.amount, bool):
            raise LedgerError(f"amounts are integer micro-USD, got {leg.amount!r}")
    total = sum(leg.amount for leg in legs)
    if total != 0:
        raise LedgerError(f"posting does not balance: legs sum to {total}")


def apply(balances: dict[str, int], legs: list[Leg]) -> list[int]:
    """Apply legs to ``balances`` in order (mutating it); return each leg's balance after.

    Raises:
        InsufficientFunds: a non-external balance would go below zero.
    """
    check_balanced(legs)
    after: list[int] = []
    trial = dict(balances)
    for leg in legs:
        new = trial.get(leg.account, 0) + leg.amount
        if new < 0 and not may_go_negative(leg.account):
            raise InsufficientFunds(leg.account, trial.get(leg.account, 0), -leg.amount)
        trial[leg.account] = new
        after.append(new)
    # Check the end state too: a later leg may not rescue an earlier overdraft, and none did.
    balances.update(trial)
    return after


@dataclass(frozen=True, slots=True)
class Split:
    """How a settled request's cost divides: provider + fee == cost; the referrer's share comes out of the fee."""

    cost: int
    provider: int
    fee: int
    referral: int


def split_cost(cost: int, provider_share_bps: int, referral_share_bps: int, has_referrer: bool) -> Split:
    """Divide ``cost`` between the provider and the platform fee (and a referrer's part of the fee).

    The provider's share rounds down, so the fee absorbs rounding and
    ``provider + fee == cost`` exactly.
    """
    if cost < 0:
        raise LedgerError("cost cannot be negative")
    provider_amount = cost * provider_share_bps // 10_000
    fee = cost - provider_amount
    referral = fee * referral_share_bps // 10_000 if has_referrer else 0
    return Split(cost=cost, provider=provider_amount, fee=fee, referral=referral)


def settlement_legs(
    hold: int, split: Split, consumer_acct: str, provider_acct: str, referrer_acct: str | None
) -> list[Leg]:
    """The legs that close a hold: escrow pays the provider, fee, referrer, and refunds the rest."""
    if split.cost > hold:
        raise LedgerError(f"cost {split.cost} exceeds the hold {hold}")
    legs = [Leg(HOLDS, -hold, HOLD)]
    if hold - split.cost:
        legs.append(Leg(consumer_acct, hold - split.cost, REFUND))
    if split.provider:
        legs.append(Leg(provider_acct, split.provider, EARNING))
    if split.fee - split.referral:
        legs.append(Leg(PLATFORM_FEES, split.fee - split.referral, PLATFORM_FEE))
    if split.referral:
        assert referrer_acct is not None
        legs.append(Leg(referrer_acct, split.referral, REFERRAL_REWARD))
    return legs
