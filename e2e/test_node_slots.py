"""A real coordinator's warm pool loads a cold model on a real node, which evicts its idle one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from openai import OpenAI

from darkbloom.testing import create_key, free_port, start, wait_http, wait_model
from tests.node.conftest import copy_model


def test_a_request_for_a_cold_model_is_loaded_into_the_nodes_only_slot(e2e_model_dir: Path, tmp_path: Path) -> None:
    first = copy_model(e2e_model_dir, tmp_path / "models" / "slot-a")
    second = copy_model(e2e_model_dir, tmp_path / "models" / "slot-b")
    port = free_port()
    db = f"sqlite:///{tmp_path / 'coord.db'}"
    base = f"http://127.0.0.1:{port}"
    coord = start(["serve", "--port", str(port), "--db", db, "--home", str(tmp_path / "coord")], tmp_path / "coord.log")
    node = None
    try:
        wait_http(f"{base}/health", proc=coord)
        key = create_key(db, tmp_path / "coord")
        node = start(
            ["node", "--coordinator", base, "--model", str(first), "--model", str(second), "--max-slots", "1",
             "--home", str(tmp_path / "node")],
            tmp_path / "node.log",
        )  # fmt: skip
        wait_model(base, key, "slot-a")
        client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
        started = time.monotonic()
        reply = client.chat.completions.create(
            model="slot-b", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        assert time.monotonic() - started < 90
        log = node.text()
        assert "unloaded slot-a (to make room for slot-b)" in log, log
        assert "loaded slot-b" in log
        assert "warm pool: asking node" in coord.text(), "the coordinator asked for the load (load_model)"
        models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        assert {"slot-a", "slot-b"} <= {m["id"] for m in models["data"]}
    finally:
        for p in (node, coord):
            if p is not None:
                p.stop()
