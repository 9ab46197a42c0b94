"""`darkbloom node login` + `darkbloom device approve` with real processes: the node's earnings reach the account."""

from __future__ import annotations

import stat
import subprocess
import time

import httpx

from darkbloom.testing import darkbloom_cmd, wait_model
from e2e.conftest import Network


def test_logged_in_node_earns_for_the_approving_account(network: Network) -> None:
    coord_home = str(network.home / "coord")
    subprocess.run(
        darkbloom_cmd("admin", "price", "set", network.model, "--input", "5", "--output", "5", "--db", network.db_url),
        check=True,
        timeout=60,
    )
    provider_key = subprocess.run(
        darkbloom_cmd("keys", "create", "--db", network.db_url, "--home", coord_home),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()[-1]
    consumer_key = subprocess.run(
        darkbloom_cmd("keys", "create", "--credit", "1", "--db", network.db_url, "--home", coord_home),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()[-1]

    node_home = network.home / "node2"
    login = subprocess.Popen(
        darkbloom_cmd("node", "login", "--coordinator", network.base_url, "--home", str(node_home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert login.stderr is not None
    first = login.stderr.readline()
    code = first.split("approve code ")[1].split(":")[0]
    approved = subprocess.run(
        darkbloom_cmd("device", "approve", code, "--coordinator", network.base_url, "--key", provider_key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert approved.returncode == 0, approved.stderr
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    token_file = node_home / "node" / "provider_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and "linked to account" in out

    network.nodes[0].stop()  # only the linked node serves from here on
    wait_model(network.base_url, network.key, network.model, present=False)
    network.add_node("node2")
    wait_model(network.base_url, network.key, network.model)
    r = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        json={"model": network.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        headers={"Authorization": f"Bearer {consumer_key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    earnings: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        earnings = httpx.get(
            f"{network.base_url}/v1/provider/earnings", headers={"Authorization": f"Bearer {provider_key}"}
        ).json()
        if earnings["requests"]:
            break
        time.sleep(0.1)
    assert earnings["requests"] == 1 and earnings["balance_micro_usd"] > 0 and len(earnings["nodes"]) == 1
