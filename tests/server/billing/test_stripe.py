"""Stripe deposits, webhook and Connect payouts: the real SDK against a local stand-in of Stripe's API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from darkbloom.protocol import Chunk, Complete, ModelInfo, Register, Usage, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.billing.audit import check_database
from darkbloom.server.settings import Settings
from tests.server.billing.stripe_standin import API_KEY, WEBHOOK_SECRET, StripeStandIn, sign


@pytest.fixture
def stand_in() -> Iterator[StripeStandIn]:
    with StripeStandIn() as s:
        yield s


@pytest.fixture
def app(tmp_path: Path, stand_in: StripeStandIn) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(
        home=tmp_path,
        db_url=f"sqlite:///{tmp_path / 'c.db'}",
        stripe_api_key=API_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=stand_in.url,
        money_rate_limit_burst=20,
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings
    check_database(settings.db_url)


def _auth(settings: Settings, credit: int = 0) -> tuple[dict[str, str], str]:
    key, rec = asyncio.run(create_key_in(settings.db_url, credit))
    return {"Authorization": f"Bearer {key}"}, rec.account_id


def test_deposit_credits_once_on_the_signed_webhook(app, stand_in: StripeStandIn) -> None:  # type: ignore[no-untyped-def]
    client, settings = app
    auth, account = _auth(settings)
    r = client.post("/v1/billing/deposits", json={"amount_usd": "12.34"}, headers=auth)
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    assert r.json()["url"].startswith("https://checkout.stripe.test/")
    assert (
        stand_in.sessions[session_id]["amount_total"] == 1234
        and stand_in.sessions[session_id]["client_reference_id"] == account
    )
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 0, "nothing until Stripe says paid"

    event = stand_in.completed_event(session_id, "evt_1")
    hook = client.post("/v1/billing/stripe/webhook", content=event, headers={"Stripe-Signature": sign(event)})
    assert hook.status_code == 200 and hook.json()["outcome"] == "credited"
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 12_340_000

    # Stripe retries deliveries: the same event again, and a second event for the same session, credit nothing.
    again = client.post("/v1/billing/stripe/webhook", content=event, headers={"Stripe-Signature": sign(event)})
    assert again.json()["outcome"] == "duplicate"
    other = stand_in.completed_event(session_id, "evt_2")
    assert (
        client.post("/v1/billing/stripe/webhook", content=other, headers={"Stripe-Signature": sign(other)}).json()[
            "outcome"
        ]
        == "ignored"
    )
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 12_340_000


def test_bad_signatures_are_refused_and_credit_nothing(app, stand_in: StripeStandIn) -> None:  # type: ignore[no-untyped-def]
    client, settings = app
    auth, _ = _auth(settings)
    session_id = client.post("/v1/billing/deposits", json={"amount_usd": 5}, headers=auth).json()["session_id"]
    event = stand_in.completed_event(session_id, "evt_bad")
    tampered = event.replace(b'"amount_total": 500', b'"amount_total": 500000')
    for headers, body in [
        ({}, event),
        ({"Stripe-Signature": sign(event, secret="whsec_wrong")}, event),
        ({"Stripe-Signature": sign(event)}, tampered),
        ({"Stripe-Signature": sign(event, timestamp=1)}, event),  # a replay from long ago
        ({"Stripe-Signature": "garbage"}, event),
    ]:
        r = client.post("/v1/billing/stripe/webhook", content=body, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature", r.text
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 0
    # The event id was not burned by the bad deliveries: the genuine one still credits.
    assert (
        client.post("/v1/billing/stripe/webhook", content=event, headers={"Stripe-Signature": sign(event)}).json()[
            "outcome"
        ]
        == "credited"
    )
    junk = b"not json"
    assert (
        client.post("/v1/billing/stripe/webhook", content=junk, headers={"Stripe-Signature": sign(junk)}).status_code
        == 400
    )


def test_deposit_minimum_and_whole_cents(app) -> None:  # type: ignore[no-untyped-def]
    client, settings = app
    auth, _ = _auth(settings)
    small = client.post("/v1/billing/deposits", json={"amount_usd": "0.49"}, headers=auth)
    assert small.status_code == 400 and small.json()["error"]["code"] == "amount_too_small"
    assert client.post("/v1/billing/deposits", json={"amount_usd": "1.001"}, headers=auth).status_code == 400
    assert client.post("/v1/billing/deposits", json={"amount_usd": "x"}, headers=auth).status_code == 400


def test_payments_unconfigured_answer_503(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", stripe_api_key="", stripe_webhook_secret=""
    )
    auth, _ = _auth(settings)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/billing/deposits", json={"amount_usd": 5}, headers=auth).status_code == 503
        assert client.post("/v1/billing/stripe/webhook", content=b"{}").status_code == 503


def _earn(client: TestClient, settings: Settings, provider_key: str, micro_usd_spend: int) -> None:
    """A linked node serves a priced request so the provider account earns."""
    admin = {"Authorization": f"Bearer {read_admin_key(settings.home)}"}
    client.post(
        "/v1/admin/prices",
        json={"model": "m1", "input_usd_per_million": 0, "output_usd_per_million": 1000},
        headers=admin,
    )
    start = client.post("/v1/device/code").json()
    client.post(
        "/v1/device/approve",
        json={"user_code": start["user_code"]},
        headers={"Authorization": f"Bearer {provider_key}"},
    )
    token = client.post("/v1/device/token", json={"device_code": start["device_code"]}).json()["access_token"]
    consumer, _ = _auth(settings, micro_usd_spend * 2)
    with client.websocket_connect("/v1/provider/ws") as ws:
        ws.send_bytes(encode(Register(node_id="node-p", models=(ModelInfo(id="m1"),), auth_token=token)))  # type: ignore[arg-type]
        decode(ws.receive_bytes())
        out: dict = {}  # type: ignore[type-arg]
        body = {"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": micro_usd_spend // 1000}
        t = threading.Thread(
            target=lambda: out.update(r=client.post("/v1/chat/completions", json=body, headers=consumer))
        )
        t.start()
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="y")))
        ws.send_bytes(
            encode(
                Complete(
                    request_id=req.request_id, usage=Usage(prompt_tokens=1, completion_tokens=micro_usd_spend // 1000)
                )
            )
        )
        t.join(10)
    assert out["r"].status_code == 200


def test_connect_payout_with_minimum_and_a_record(app, stand_in: StripeStandIn) -> None:  # type: ignore[no-untyped-def]
    client, settings = app
    auth, account = _auth(settings)
    assert client.post("/v1/provider/payouts", json={}, headers=auth).json()["error"]["code"] == "no_connected_account"
    connect = client.post("/v1/provider/connect", json={}, headers=auth).json()
    assert connect["stripe_account"] in stand_in.accounts and connect["onboarding_url"].startswith(
        "https://connect.stripe.test/"
    )
    assert (
        client.post("/v1/provider/connect", json={}, headers=auth).json()["stripe_account"] == connect["stripe_account"]
    )
    _earn(client, settings, auth["Authorization"].removeprefix("Bearer "), 2_000_000)  # $2 spent -> $1.80 earned
    assert client.get("/v1/provider/earnings", headers=auth).json()["balance_micro_usd"] == 1_800_000
    low = client.post("/v1/provider/payouts", json={"amount_usd": "0.99"}, headers=auth)
    assert low.status_code == 400 and low.json()["error"]["code"] == "amount_too_small"

    stand_in.fail_transfers = True
    failed = client.post("/v1/provider/payouts", json={}, headers=auth)
    assert failed.status_code == 502
    assert client.get("/v1/provider/earnings", headers=auth).json()["balance_micro_usd"] == 1_800_000, (
        "a refused transfer is reversed"
    )
    stand_in.fail_transfers = False

    paid = client.post("/v1/provider/payouts", json={}, headers=auth)
    assert paid.status_code == 200, paid.text
    assert paid.json()["amount_micro_usd"] == 1_800_000
    [transfer] = stand_in.transfers.values()
    assert (transfer["amount"], transfer["destination"]) == (180, connect["stripe_account"])
    assert client.get("/v1/provider/earnings", headers=auth).json()["balance_micro_usd"] == 0
    records = client.get("/v1/provider/payouts", headers=auth).json()["data"]
    assert sorted(r["status"] for r in records) == ["failed", "paid"]
    assert [r["transfer_id"] for r in records if r["status"] == "paid"] == [transfer["id"]]
    over = client.post("/v1/provider/payouts", json={"amount_usd": 5}, headers=auth)
    assert over.status_code == 400 and over.json()["error"]["code"] == "insufficient_funds"


def test_money_endpoints_are_rate_limited(tmp_path: Path, stand_in: StripeStandIn) -> None:
    settings = Settings(
        home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", stripe_api_key=API_KEY, stripe_api_base=stand_in.url
    )
    auth, _ = _auth(settings)
    with TestClient(create_app(settings)) as client:
        codes = [client.post("/v1/billing/deposits", json={"amount_usd": 1}, headers=auth) for _ in range(4)]
    assert [c.status_code for c in codes] == [200, 200, 200, 429]
    assert int(codes[3].headers["Retry-After"]) >= 1
    check_database(settings.db_url)
