"""``darkbloom node login`` against a coordinator in process: approve, token file, earnings to the account."""

from __future__ import annotations

import asyncio
import stat
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from darkbloom.client.device import DeviceLoginError, approve, login, read_provider_token
from darkbloom.protocol import Chunk, Complete, ModelInfo, Register, Usage, decode, encode
from darkbloom.server.app import create_app
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.billing.audit import check_database
from darkbloom.server.settings import Settings


@pytest.fixture
def coord(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path / "coord", db_url=f"sqlite:///{tmp_path / 'c.db'}")
    with TestClient(create_app(settings), base_url="http://coord.test") as client:
        yield client, settings
    check_database(settings.db_url)


def test_node_login_links_earnings_to_the_approving_account(coord, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, settings = coord
    provider_key, provider = asyncio.run(create_key_in(settings.db_url))
    consumer_key, _ = asyncio.run(create_key_in(settings.db_url, 1_000_000))
    said: list[str] = []
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # the holder approves while the node is polling (too fast: slowed down)
            code = said[0].split("approve code ")[1].split(":")[0]
            assert approve("http://coord.test", provider_key, code, client=client) == provider.account_id

    node_home = tmp_path / "node-home"
    account, path = login("http://coord.test", node_home, said.append, sleep=sleep, client=client)
    assert account == provider.account_id and waits == [5.0, 5.0, 10.0]
    assert "http://coord.test/link?code=" in said[0]
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    token = read_provider_token(node_home)
    assert token is not None and token.startswith("dbp-")

    # The node registers with its token; a priced request it serves pays the provider's account.
    admin = {"Authorization": f"Bearer {read_admin_key(settings.home)}"}
    client.post(
        "/v1/admin/prices",
        json={"model": "m1", "input_usd_per_million": 10, "output_usd_per_million": 10},
        headers=admin,
    )
    with client.websocket_connect("/v1/provider/ws") as ws:
        ws.send_bytes(encode(Register(node_id="node-l", models=(ModelInfo(id="m1"),), auth_token=token)))  # type: ignore[arg-type]
        decode(ws.receive_bytes())
        out: dict = {}  # type: ignore[type-arg]
        body = {"model": "m1", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100}
        t = threading.Thread(
            target=lambda: out.update(
                r=client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {consumer_key}"})
            )
        )
        t.start()
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="y")))
        ws.send_bytes(
            encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=100, completion_tokens=100)))
        )
        t.join(10)
    assert out["r"].status_code == 200
    earnings = client.get("/v1/provider/earnings", headers={"Authorization": f"Bearer {provider_key}"}).json()
    assert earnings["nodes"] == ["node-l"]
    assert earnings["balance_micro_usd"] == 1800 and earnings["requests"] == 1  # 90% of 2,000


def test_denied_login_fails_clearly(coord, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, settings = coord
    key, _ = asyncio.run(create_key_in(settings.db_url))
    said: list[str] = []

    def sleep(_: float) -> None:
        code = said[0].split("approve code ")[1].split(":")[0]
        approve("http://coord.test", key, code, deny=True, client=client)

    with pytest.raises(DeviceLoginError, match="access_denied"):
        login("http://coord.test", tmp_path / "n", said.append, sleep=sleep, client=client)
    assert read_provider_token(tmp_path / "n") is None
    with pytest.raises(DeviceLoginError, match="404"):
        approve("http://coord.test", key, "ABCD-EFGH", client=client)


def test_link_page_approves_with_an_api_key(coord) -> None:  # type: ignore[no-untyped-def]
    client, settings = coord
    key, _ = asyncio.run(create_key_in(settings.db_url))
    start = client.post("/v1/device/code").json()
    page = client.get(f"/link?code={start['user_code']}")
    assert page.status_code == 200 and start["user_code"] in page.text and "<form" in page.text
    assert client.get("/link?code=<script>").text.count("<script>") == 0
    bad = client.post("/link", data={"user_code": start["user_code"], "api_key": "dbk-nope"})
    assert bad.status_code == 401
    ok = client.post("/link", data={"user_code": start["user_code"], "api_key": key})
    assert ok.status_code == 200 and "Node linked" in ok.text
    token = client.post(
        "/v1/device/token",
        data={"device_code": start["device_code"], "grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
    )
    assert token.status_code == 200 and token.json()["token_type"] == "Bearer"
    assert client.post("/v1/device/token", json={}).json()["error"] == "invalid_request"
    assert client.post("/v1/device/token", content=b"{").status_code == 400
