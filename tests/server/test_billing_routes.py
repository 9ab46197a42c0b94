"""Money over HTTP, in process: 402 before any node works, balance, usage, pricing, admin, invites."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from darkbloom.protocol import Chunk, Complete, InferenceRequest, Usage, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.billing.audit import check_database
from darkbloom.server.settings import Settings
from tests.server.conftest import register

BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


@pytest.fixture
def money_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rate_limit_rps=1000, rate_limit_burst=1000
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {read_admin_key(tmp_path)}"}
        yield client, admin, settings
    check_database(settings.db_url)


def _key(settings: Settings, usd: int = 0) -> dict[str, str]:
    key, _ = asyncio.run(create_key_in(settings.db_url, usd * 1_000_000))
    return {"Authorization": f"Bearer {key}"}


def test_priced_request_is_held_settled_and_shows_in_usage_and_earnings(money_app) -> None:  # type: ignore[no-untyped-def]
    client, admin, settings = money_app
    assert client.get("/v1/pricing").json()["data"] == []
    r = client.post(
        "/v1/admin/prices", json={"model": "m1", "input_usd_per_million": 1, "output_usd_per_million": 4}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert client.get("/v1/pricing").json()["data"] == [
        {"model": "m1", "input_micro_usd_per_million": 1_000_000, "output_micro_usd_per_million": 4_000_000}
    ]
    auth = _key(settings, usd=1)
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 1_000_000
    with client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        import threading

        out: dict = {}  # type: ignore[type-arg]
        big = {**BODY, "messages": [{"role": "user", "content": "hi " * 500}], "max_tokens": 200}
        t = threading.Thread(target=lambda: out.update(r=client.post("/v1/chat/completions", json=big, headers=auth)))
        t.start()
        req = decode(ws.receive_bytes())
        assert isinstance(req, InferenceRequest)
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
        ws.send_bytes(
            encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=300, completion_tokens=100)))
        )
        t.join(10)
    assert out["r"].status_code == 200
    usage = client.get("/v1/usage", headers=auth).json()["data"]
    assert len(usage) == 1
    row = usage[0]
    assert (row["request_id"], row["model"], row["prompt_tokens"], row["completion_tokens"], row["node_id"]) == (
        req.request_id,
        "m1",
        300,
        100,
        "node-a",
    )
    assert row["cost_micro_usd"] == 700  # 300 x $1/M + 100 x $4/M
    assert client.get("/v1/balance", headers=auth).json()["balance_micro_usd"] == 1_000_000 - 700
    assert client.get("/v1/admin/audit", headers=admin).json() == {"ok": True, "problems": []}
    earnings = client.get("/v1/provider/earnings", headers=auth).json()
    assert earnings["balance_micro_usd"] == 0, "node-a is not linked to this account"


def test_unaffordable_request_gets_402_and_no_node_sees_it(money_app) -> None:  # type: ignore[no-untyped-def]
    client, admin, settings = money_app
    client.post(
        "/v1/admin/prices", json={"model": "m1", "input_usd_per_million": 1, "output_usd_per_million": 4}, headers=admin
    )
    auth = _key(settings)
    with client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        r = client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers=auth)
        assert r.status_code == 402
        err = r.json()["error"]
        assert err["code"] == "insufficient_funds" and "micro-USD" in err["message"]
        # The node got nothing: the next frame it sees is the one we provoke now.
        ws.send_bytes(b"junk")
        assert type(decode(ws.receive_bytes())).__name__ == "Error"
    assert client.get("/v1/usage", headers=auth).json()["data"] == []


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rate_limit_rps=0.01, rate_limit_burst=2)
    key, _ = asyncio.run(create_key_in(settings.db_url))
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        codes = [client.post("/v1/chat/completions", json={**BODY, "model": "nope"}, headers=auth) for _ in range(3)]
    assert [c.status_code for c in codes] == [404, 404, 429]
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(codes[2].headers["Retry-After"]) >= 1
    check_database(settings.db_url)


def test_count_tokens_takes_from_the_request_rate_too(tmp_path: Path) -> None:
    """Free, but not a way around the key's request limit (each one is routed to a node)."""
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rate_limit_rps=0.01, rate_limit_burst=2)
    key, _ = asyncio.run(create_key_in(settings.db_url))
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(settings)) as client:
        codes = [client.post("/v1/messages/count_tokens", json=body, headers={"x-api-key": key}) for _ in range(3)]
    assert [c.status_code for c in codes] == [404, 404, 429]
    assert codes[2].json()["error"]["type"] == "rate_limit_error" and int(codes[2].headers["Retry-After"]) >= 1


def test_admin_routes_need_the_admin_key_and_validate_input(money_app) -> None:  # type: ignore[no-untyped-def]
    client, admin, settings = money_app
    auth = _key(settings)
    assert (
        client.post(
            "/v1/admin/prices", json={"model": "m1", "input_usd_per_million": 1, "output_usd_per_million": 1}
        ).status_code
        == 401
    )
    assert (
        client.post(
            "/v1/admin/prices",
            json={"model": "m1", "input_usd_per_million": 1, "output_usd_per_million": 1},
            headers=auth,
        ).status_code
        == 403
    )
    for bad in (
        b"",
        b"[1]",
        b"{",
        b'{"model": "m1", "input_usd_per_million": "x", "output_usd_per_million": 1}',
        b'{"model": "", "input_usd_per_million": 1}',
    ):
        r = client.post("/v1/admin/prices", content=bad, headers=admin)
        assert r.status_code == 400 and "error" in r.json(), bad
    r = client.post("/v1/admin/credit", json={"account_id": "acct_nope", "amount_usd": 1}, headers=admin)
    assert r.status_code == 404


def test_invites_credit_once_per_account_and_referrers_get_a_share(money_app) -> None:  # type: ignore[no-untyped-def]
    client, admin, settings = money_app
    code = client.post("/v1/admin/invites", json={"credit_usd": 2, "max_uses": 2}, headers=admin).json()["code"]
    assert code.startswith("INV-") and len(code) == 12
    a, b, c = _key(settings), _key(settings), _key(settings)
    r = client.post("/v1/invites/redeem", json={"code": code.lower()}, headers=a)
    assert r.status_code == 200 and r.json()["balance_micro_usd"] == 2_000_000
    assert client.post("/v1/invites/redeem", json={"code": code}, headers=a).status_code == 409
    assert client.post("/v1/invites/redeem", json={"code": code}, headers=b).status_code == 200
    assert client.post("/v1/invites/redeem", json={"code": code}, headers=c).status_code == 410
    assert client.post("/v1/invites/redeem", json={"code": "INV-00000000"}, headers=c).status_code == 404
    ref = client.get("/v1/referral", headers=a).json()["code"]
    assert ref.startswith("REF-") and client.get("/v1/referral", headers=a).json()["code"] == ref
    assert client.post("/v1/referral/apply", json={"code": ref}, headers=a).status_code == 400
    assert client.post("/v1/referral/apply", json={"code": ref}, headers=c).status_code == 200
    assert client.post("/v1/referral/apply", json={"code": ref}, headers=c).status_code == 409


def test_ledger_postings_are_counted_on_the_metrics_endpoint(money_app) -> None:  # type: ignore[no-untyped-def]
    client, admin, settings = money_app
    client.post(
        "/v1/admin/prices", json={"model": "m1", "input_usd_per_million": 1, "output_usd_per_million": 1}, headers=admin
    )
    auth = _key(settings, usd=1)
    client.post("/v1/chat/completions", json={**BODY, "model": "m1"}, headers=auth)  # held, then released: no node
    account = client.get("/v1/balance", headers=auth).json()["account_id"]
    client.post("/v1/admin/credit", json={"account_id": account, "amount_usd": 1}, headers=admin)
    text = client.get("/metrics").text
    counts = {
        line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("darkbloom_ledger_postings_total{")
    }
    assert counts == {"hold": 1.0, "refund": 1.0, "credit": 1.0}


def test_rate_limit_is_per_key_not_per_account(tmp_path: Path) -> None:
    from darkbloom.server.auth.keys import create_api_key
    from darkbloom.server.store import open_store

    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rate_limit_rps=0.01, rate_limit_burst=1)

    async def two_keys() -> tuple[str, str]:
        store = open_store(settings.db_url)
        await store.migrate()
        try:
            first, record = await create_api_key(store)
            second, _ = await create_api_key(store, record.account_id)
            return first, second
        finally:
            await store.close()

    first, second = asyncio.run(two_keys())
    with TestClient(create_app(settings)) as client:
        post = lambda key: client.post(  # noqa: E731
            "/v1/chat/completions", json={**BODY, "model": "nope"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert [post(first).status_code, post(first).status_code] == [404, 429]
        assert post(second).status_code == 404  # same account, its own bucket


def test_hold_covers_prompt_text_outside_the_messages() -> None:
    from darkbloom.protocol import SamplingParams
    from darkbloom.server.billing.hook import prompt_bytes_outside_messages
    from darkbloom.server.billing.pricing import Price, worst_case
    from darkbloom.server.gateway import InferenceJob

    price = Price(input_per_m=1_000_000, output_per_m=0)
    raw = InferenceJob("r", "m1", (), SamplingParams(max_tokens=1, raw_prompt="x" * 100_000), "acct")
    plain = InferenceJob("r", "m1", (), SamplingParams(max_tokens=1), "acct")
    assert prompt_bytes_outside_messages(raw) == 100_000
    held_raw = worst_case(price, raw.messages, 1, 0, prompt_bytes_outside_messages(raw))
    held_plain = worst_case(price, plain.messages, 1, 0, prompt_bytes_outside_messages(plain))
    assert held_raw - held_plain >= 100_000  # a legacy-completions prompt is paid for
