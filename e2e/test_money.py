"""Money end to end with real processes: priced requests billed, 402, and a coordinator SIGKILLed mid-stream.

Every scenario ends with the accounting check on the coordinator's database.
"""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import openai
import pytest

from darkbloom.server.billing.audit import check_database
from darkbloom.server.store import open_store
from darkbloom.testing import darkbloom_cmd, start, wait_http, wait_model
from e2e.conftest import Network

PROMPT = [{"role": "user", "content": "count to one hundred"}]


def cli(*args: str) -> str:
    out = subprocess.run(darkbloom_cmd(*args), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def holds(db_url: str) -> list[tuple[str, str, int]]:
    async def read() -> list[tuple[str, str, int]]:
        store = open_store(db_url)
        await store.migrate()
        try:
            async with store.transaction() as tx:
                return [
                    (r[0], r[1], int(r[2]))
                    for r in await tx.fetchall("SELECT request_id, state, amount FROM holds ORDER BY created_at")
                ]
        finally:
            await store.close()

    return asyncio.run(read())


def test_priced_requests_are_billed_and_unfunded_keys_get_402(network: Network) -> None:
    cli("admin", "price", "set", network.model, "--input", "1", "--output", "2", "--db", network.db_url)
    key = cli("keys", "create", "--credit", "0.05", "--db", network.db_url, "--home", str(network.home / "coord"))
    client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=key)
    resp = client.chat.completions.create(model=network.model, messages=PROMPT, max_tokens=16, temperature=0)
    assert resp.usage is not None
    auth = {"Authorization": f"Bearer {key}"}
    usage = httpx.get(f"{network.base_url}/v1/usage", headers=auth).json()["data"]
    assert len(usage) == 1 and usage[0]["request_id"] == resp.id
    assert (usage[0]["prompt_tokens"], usage[0]["completion_tokens"]) == (
        resp.usage.prompt_tokens,
        resp.usage.completion_tokens,
    )
    expected = max(
        100, -(-(resp.usage.prompt_tokens * 1_000_000 + resp.usage.completion_tokens * 2_000_000) // 1_000_000)
    )
    assert usage[0]["cost_micro_usd"] == expected
    assert httpx.get(f"{network.base_url}/v1/balance", headers=auth).json()["balance_micro_usd"] == 50_000 - expected
    pricing = httpx.get(f"{network.base_url}/v1/pricing").json()["data"]
    assert pricing == [
        {"model": network.model, "input_micro_usd_per_million": 1_000_000, "output_micro_usd_per_million": 2_000_000}
    ]

    broke = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=network.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        broke.chat.completions.create(model=network.model, messages=PROMPT, max_tokens=16, stream=True)
    assert info.value.status_code == 402 and "insufficient" in str(info.value.body).lower()
    check_database(network.db_url)


@pytest.mark.parametrize("network", ["sqlite", "postgres"], indirect=True)
def test_coordinator_killed_mid_stream_releases_the_hold_once_on_restart(network: Network) -> None:
    cli("admin", "price", "set", network.model, "--input", "1", "--output", "1", "--db", network.db_url)
    key = cli("keys", "create", "--credit", "1", "--db", network.db_url, "--home", str(network.home / "coord"))
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": network.model, "messages": PROMPT, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{network.base_url}/v1/chat/completions", json=body, headers=auth, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and "content" in line:
                network.coordinator.kill()  # SIGKILL: no shutdown code runs
                break
    [(request_id, state, amount)] = holds(network.db_url)
    assert state == "held" and amount > 0, "the killed coordinator left its hold open"

    port = network.base_url.rsplit(":", 1)[1]
    network.coordinator = start(network.coordinator.argv, network.home / "coord2.log")
    wait_http(f"{network.base_url}/health", proc=network.coordinator)
    assert holds(network.db_url) == [(request_id, "released", amount)]
    assert httpx.get(f"{network.base_url}/v1/balance", headers=auth).json()["balance_micro_usd"] == 1_000_000
    assert httpx.get(f"{network.base_url}/v1/usage", headers=auth).json()["data"] == []
    check_database(network.db_url)

    # The restarted coordinator serves and bills again; a second restart sweeps nothing twice.
    wait_model(network.base_url, key, network.model)
    done = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 8},
        headers=auth,
        timeout=60,
    )
    assert done.status_code == 200, done.text
    network.coordinator.stop()
    network.coordinator = start(network.coordinator.argv, network.home / "coord3.log")
    wait_http(f"{network.base_url}/health", proc=network.coordinator)
    states = [h[1] for h in holds(network.db_url)]
    assert states == ["released", "settled"], f"port {port}: {states}"
    cost = httpx.get(f"{network.base_url}/v1/usage", headers=auth).json()["data"][0]["cost_micro_usd"]
    assert httpx.get(f"{network.base_url}/v1/balance", headers=auth).json()["balance_micro_usd"] == 1_000_000 - cost
    check_database(network.db_url)
