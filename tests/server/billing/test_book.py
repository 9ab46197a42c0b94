"""The reservation book: admission from memory never spends more than the balance it was loaded with plus what came back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from darkbloom.server.billing.book import ReservationBook


def test_an_account_not_loaded_reserves_nothing() -> None:
    book = ReservationBook()
    assert not book.reserve("a", 0) and not book.known("a")
    book.load("a", 500)
    assert book.reserve("a", 300) and book.spendable("a") == 200
    assert not book.reserve("a", 201), "more than is left is refused and takes nothing"
    assert book.spendable("a") == 200


def test_money_coming_back_can_be_spent_again_and_a_dropped_account_must_load() -> None:
    book = ReservationBook()
    book.load("a", 100)
    assert book.reserve("a", 100) and not book.reserve("a", 1)
    book.adjust("a", 60)  # a settlement charged 40 of the 100 held
    assert book.reserve("a", 60)
    book.drop("a")
    assert not book.known("a") and not book.reserve("a", 0)
    book.adjust("a", 10)  # a refund for a dropped account waits for the next load
    assert not book.known("a")


@given(
    balance=st.integers(0, 10_000),
    events=st.lists(st.tuples(st.sampled_from(["reserve", "finish", "release"]), st.integers(0, 3_000), st.integers(0, 100)), max_size=60),
)
def test_the_book_spends_exactly_the_balance_less_what_is_held_and_charged(balance: int, events: list[tuple[str, int, int]]) -> None:
    book = ReservationBook()
    book.load("a", balance)
    held: list[int] = []
    charged = 0
    for kind, amount, pct in events:
        if kind == "reserve":
            could = balance - sum(held) - charged >= amount
            assert book.reserve("a", amount) == could
            if could:
                held.append(amount)
        elif held:
            hold = held.pop(0)
            charge = 0 if kind == "release" else hold * pct // 100
            book.adjust("a", hold - charge)  # the unused part of the hold comes back
            charged += charge
        assert book.spendable("a") == balance - sum(held) - charged >= 0
