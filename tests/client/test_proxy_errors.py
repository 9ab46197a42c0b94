"""The sealing proxy's own refusals, before anything is sealed or sent."""

from __future__ import annotations

import msgspec
import pytest
from starlette.testclient import TestClient

from darkbloom.client.proxy import create_proxy_app
from darkbloom.client.receipts import load_receipt
from darkbloom.node.attestation import NodeAttestor
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import Hardware, Usage
from darkbloom.protocol.sealed import AttestationError, VerifiableReceipt, b64e, decode_receipt
from darkbloom.testing import free_port


def test_bad_bodies_unknown_routes_and_an_unreachable_coordinator_get_openai_errors() -> None:
    app = create_proxy_app(f"http://127.0.0.1:{free_port()}", "dbk-test")
    with TestClient(app) as client:
        bad = client.post("/v1/chat/completions", content=b"{")
        assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]["message"]
        empty = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
        missing = client.get("/v1/embeddings")
        assert missing.status_code == 404 and "not implemented" in missing.json()["error"]["message"]
        down = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert down.status_code == 502 and down.json()["error"]["code"] == "coordinator_unreachable"


def test_receipts_load_from_json_or_base64_and_garbage_is_refused() -> None:
    att = NodeAttestor(NodeKeys.generate(), Hardware(), {"m": "aa"}, code_hash="bb")
    doc = VerifiableReceipt(decode_receipt(att.receipt("r", "m", "", Usage(1, 2), "stop")), att.bundle())
    text = msgspec.json.encode(doc).decode()
    assert load_receipt(text) == doc
    assert load_receipt(b64e(text.encode())) == doc
    for junk in ("", "not base64 !", b64e(b"[1, 2]"), '{"receipt": 1}'):
        with pytest.raises(AttestationError):
            load_receipt(junk)


def test_proxy_refuses_a_port_in_use_with_a_clear_message() -> None:
    import socket
    import subprocess

    from darkbloom.testing import darkbloom_cmd

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            darkbloom_cmd("proxy", "--port", str(port), "--coordinator", "http://127.0.0.1:1", "--api-key", "k"),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in out.stderr
