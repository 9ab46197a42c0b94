"""The ledger's pure arithmetic: splits, postings, prices, rate limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkbloom.protocol import ChatMessage
from darkbloom.server.billing import ledger
from darkbloom.server.billing.ledger import InsufficientFunds, LedgerError, Leg
from darkbloom.server.billing.pricing import FREE, Price, cost, prompt_token_bound, worst_case
from darkbloom.server.billing.ratelimit import RateLimiter, RateLimits, retry_after_header


@given(st.integers(0, 10**12), st.integers(0, 10_000), st.integers(0, 10_000), st.booleans())
def test_split_always_adds_up_to_the_cost(cost_: int, share: int, referral: int, has_ref: bool) -> None:
    s = ledger.split_cost(cost_, share, referral, has_ref)
    assert s.provider + s.fee == cost_
    assert 0 <= s.referral <= s.fee and s.provider >= 0
    legs = ledger.settlement_legs(cost_ + 7, s, "consumer:a", "provider:p", "consumer:r" if has_ref else None)
    assert sum(leg.amount for leg in legs) == 0


def test_unbalanced_or_fractional_postings_are_refused() -> None:
    with pytest.raises(LedgerError, match="balance"):
        ledger.check_balanced([Leg("consumer:a", 5, "x"), Leg("platform:fees", -4, "x")])
    with pytest.raises(LedgerError, match="integer"):
        ledger.check_balanced([Leg("consumer:a", 0.5, "x"), Leg("platform:fees", -0.5, "x")])  # type: ignore[arg-type]


def test_apply_refuses_an_overdraft_and_leaves_balances_untouched() -> None:
    balances = {"consumer:a": 10}
    with pytest.raises(InsufficientFunds) as info:
        ledger.apply(balances, [Leg("consumer:a", -11, "hold"), Leg(ledger.HOLDS, 11, "hold")])
    assert info.value.balance == 10 and info.value.needed == 11
    assert balances == {"consumer:a": 10}
    after = ledger.apply(balances, [Leg(ledger.EXTERNAL_STRIPE, -5, "d"), Leg("consumer:a", 5, "d")])
    assert after == [-5, 15] and balances == {"consumer:a": 15, ledger.EXTERNAL_STRIPE: -5}


@pytest.mark.parametrize(
    ("usd", "micro"), [("1", 1_000_000), ("0.000001", 1), ("2.5", 2_500_000), (0, 0), ("0.0000004", 0)]
)
def test_dollars_to_micro_dollars(usd: str, micro: int) -> None:
    assert ledger.usd_to_micro(usd) == micro


@pytest.mark.parametrize("bad", ["abc", "-1", "nan", "inf", ""])
def test_bad_dollar_amounts_are_refused(bad: str) -> None:
    with pytest.raises(LedgerError):
        ledger.usd_to_micro(bad)


def test_cost_rounds_up_with_a_minimum_and_free_is_free() -> None:
    price = Price(input_per_m=1_000_000, output_per_m=2_000_000)  # $1 / $2 per million tokens
    assert cost(price, 1000, 500) == 2000
    assert cost(price, 1, 0) == 100  # the minimum charge
    assert cost(Price(3, 0), 1, 0, min_charge=0) == 1  # 3e-6 micro-USD rounds up, never down to free
    assert cost(FREE, 10**9, 10**9) == 0


def test_the_hold_bounds_any_real_prompt() -> None:
    msgs = (ChatMessage(role="user", content="héllo wörld " * 50),)
    # Byte-level tokenizers never produce more tokens than bytes.
    assert prompt_token_bound(msgs) >= len(msgs[0].content.encode())
    price = Price(1_000_000, 1_000_000)
    assert worst_case(price, msgs, 100) == cost(price, prompt_token_bound(msgs), 100)


def test_rate_limiter_burst_then_refill() -> None:
    lim = RateLimiter(RateLimits(requests_per_s=2, burst=3, input_tokens_per_min=0, output_tokens_per_min=0))
    assert [lim.check("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.check("k", 0.0)
    assert wait == pytest.approx(0.5)
    assert retry_after_header(wait) == "1"
    assert lim.check("other", 0.0) == 0.0, "buckets are per consumer"
    assert lim.check("k", 0.5) == 0.0
    assert lim.check("k", 0.5) > 0


def test_token_buckets_refuse_without_charging_the_request_bucket() -> None:
    lim = RateLimiter(RateLimits(requests_per_s=100, burst=100, input_tokens_per_min=600, output_tokens_per_min=60))
    assert lim.check("k", 0.0, input_tokens=10, output_tokens=60) == 0.0
    wait = lim.check("k", 0.0, input_tokens=10, output_tokens=30)
    assert wait == pytest.approx(30.0)  # 30 output tokens at 1 per second
    assert lim.check("k", 30.0, input_tokens=10, output_tokens=30) == 0.0
    assert math.isinf(RateLimiter(RateLimits(0, 0, 0, 0)).check("k", 0.0)) is False


@given(
    st.lists(st.tuples(st.floats(0, 2), st.integers(0, 500), st.integers(0, 500)), max_size=60),
    st.integers(1, 5),
)
def test_the_limiter_never_admits_more_than_its_buckets_allow(steps: list[tuple[float, int, int]], rps: int) -> None:
    limits = RateLimits(requests_per_s=rps, burst=4, input_tokens_per_min=1200, output_tokens_per_min=600)
    lim = RateLimiter(limits)
    now = 0.0
    requests = inputs = outputs = 0
    for dt, tokens_in, tokens_out in steps:
        now += dt
        wait = lim.check("k", now, tokens_in, tokens_out)
        if wait > 0:
            # Refused, and nothing taken: waiting as long as it says is enough.
            now += wait + 1e-9
            assert lim.check("k", now, tokens_in, tokens_out) == 0.0
        requests += 1
        inputs += min(tokens_in, limits.input_tokens_per_min)
        outputs += min(tokens_out, limits.output_tokens_per_min)
    # A bucket admits at most what it starts with plus what it refills in the time that passed.
    assert requests <= limits.burst + rps * now + 1e-6
    assert inputs <= limits.input_tokens_per_min * (1 + now / 60) + 1e-6
    assert outputs <= limits.output_tokens_per_min * (1 + now / 60) + 1e-6
