"""Sealed mode end to end: a real node process, a coordinator whose every byte is recorded.

The coordinator runs in this process under uvicorn, wrapped so that every
HTTP body and WebSocket frame it receives or sends is recorded, with all log
records captured; the node is a real ``darkbloom node`` process. A random
canary sealed into the prompt must appear nowhere the coordinator could see.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
import uvicorn

from darkbloom.client.receipts import load_receipt, verify_receipt_doc
from darkbloom.client.sealing import SealedClient, SealedDone, SealedStart, SealedText
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.settings import Settings
from darkbloom.testing import Proc, darkbloom_cmd, free_port, start, wait_http, wait_model


class RecordingASGI:
    """Wraps an ASGI app and keeps every body and frame it receives or sends."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[bytes] = []
        self.lock = threading.Lock()

    def _keep(self, message: dict[str, Any]) -> None:
        for key in ("body", "bytes", "text"):
            value = message.get(key)
            if value:
                with self.lock:
                    self.seen.append(value.encode() if isinstance(value, str) else bytes(value))
        for name, value in message.get("headers", []) or []:
            with self.lock:
                self.seen.append(bytes(name) + b": " + bytes(value))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            self._keep(
                {"text": f"{scope['path']}?{scope.get('query_string', b'').decode()}", "headers": scope.get("headers")}
            )

        async def recv() -> dict[str, Any]:
            message = await receive()
            self._keep(message)
            return message

        async def snd(message: dict[str, Any]) -> None:
            self._keep(message)
            await send(message)

        await self.app(scope, recv, snd)

    def contains(self, needle: bytes) -> bool:
        with self.lock:
            return any(needle in item for item in self.seen)


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + repr(record.args))


class ServerThread:
    """A uvicorn server on its own thread and event loop."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws_max_size=16 * 1024 * 1024
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@dataclass
class SealedNet:
    url: str
    key: str
    db_path: Path
    recorder: RecordingASGI
    logs: LogRecorder
    node: Proc
    proxy_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def sealed_net(tmp_path_factory: pytest.TempPathFactory, e2e_model_dir: Path) -> Iterator[SealedNet]:
    tmp = tmp_path_factory.mktemp("sealed")
    db_path = tmp / "coord.db"
    settings = Settings(home=tmp / "coord", db_url=f"sqlite:///{db_path}")
    key, _ = asyncio.run(create_key_in(settings.db_url))
    logs = LogRecorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    for noisy in ("aiosqlite", "asyncio", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    recorder = RecordingASGI(create_app(settings))
    coord = ServerThread(recorder, free_port())
    coord.start()
    node = start(
        ["node", "--coordinator", coord.url, "--model", str(e2e_model_dir), "--home", str(tmp / "node")],
        tmp / "node.log",
    )
    # The real `darkbloom proxy` command; its key comes from the environment, as a user would pass it.
    proxy_port = free_port()
    proxy = start(
        ["proxy", "--port", str(proxy_port), "--coordinator", coord.url, "-k", "2", "--home", str(tmp / "client")],
        tmp / "proxy.log",
        env={"DARKBLOOM_API_KEY": key},
    )
    try:
        wait_model(coord.url, key, "tiny-e2e", timeout=120)
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        wait_http(f"{proxy_url}/v1/models", proc=proxy)
        yield SealedNet(coord.url, key, db_path, recorder, logs, node, proxy_url)
    finally:
        node.stop()
        proxy.stop()
        coord.stop()
        root.removeHandler(logs)
        root.setLevel(old_level)


async def _sealed_chat(net: SealedNet, content: str, max_tokens: int = 12) -> tuple[str, SealedStart, SealedDone]:
    client = SealedClient(net.url, net.key)
    try:
        text, start_ev, done = "", None, None
        async for ev in client.chat(
            {
                "model": "tiny-e2e",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
        ):
            if isinstance(ev, SealedStart):
                start_ev = ev
            elif isinstance(ev, SealedText):
                text += ev.text
            elif isinstance(ev, SealedDone):
                done = ev
        assert start_ev is not None and done is not None
        return text, start_ev, done
    finally:
        await client.aclose()


def test_canary_in_a_sealed_prompt_never_reaches_the_coordinator(sealed_net: SealedNet) -> None:
    canary = f"canary-{secrets.token_hex(12)}"
    text, start_ev, done = asyncio.run(_sealed_chat(sealed_net, f"remember {canary} and repeat it"))
    assert start_ev.headers["x-darkbloom-privacy"] == "sealed"
    assert (
        start_ev.headers["x-provider-attested"] == "true" and start_ev.headers["x-provider-trust-level"] == "software"
    )
    assert done.usage["completion_tokens"] > 0 and done.receipt_payload is not None
    assert done.receipt_payload.completion_tokens == done.usage["completion_tokens"]
    # The node really did see the prompt: its token count covers the canary.
    assert done.usage["prompt_tokens"] > 10
    seen = sealed_net.recorder
    # Positive controls: the recorder sees what the coordinator handles, and the
    # log capture sees the coordinator's records; a plain prompt is visible.
    assert seen.contains(b"application/darkbloom-sealed+json") and seen.contains(b'"type":"chunk"')
    assert any("registered" in line for line in sealed_net.logs.lines)
    control = f"control-{secrets.token_hex(8)}"
    httpx.post(
        f"{sealed_net.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {sealed_net.key}"},
        json={"model": "tiny-e2e", "messages": [{"role": "user", "content": control}], "max_tokens": 2},
        timeout=60,
    ).raise_for_status()
    assert seen.contains(control.encode())
    assert not seen.contains(canary.encode()), "canary in a frame or HTTP body the coordinator handled"
    assert not seen.contains(canary[7:].encode())
    if len(text) >= 8:
        assert not seen.contains(text.encode()), "completion text reached the coordinator in the clear"
    assert not any(canary in line for line in sealed_net.logs.lines), "canary in the coordinator's logs"
    db_files = [p for p in sealed_net.db_path.parent.glob(sealed_net.db_path.name + "*")]
    assert db_files
    for path in db_files:
        assert canary.encode() not in path.read_bytes(), f"canary in {path.name}"


def test_plain_request_to_the_same_node_matches_the_sealed_answer(sealed_net: SealedNet) -> None:
    text, _, done = asyncio.run(_sealed_chat(sealed_net, "hello there", max_tokens=8))
    resp = httpx.post(
        f"{sealed_net.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {sealed_net.key}"},
        json={
            "model": "tiny-e2e",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-darkbloom-privacy"] == "coordinator-visible"
    assert resp.json()["choices"][0]["message"]["content"] == text
    assert resp.json()["usage"]["completion_tokens"] == done.usage["completion_tokens"]


def test_proxy_seals_requests_from_the_openai_sdk(sealed_net: SealedNet, tmp_path: Path) -> None:
    with openai.OpenAI(base_url=f"{sealed_net.proxy_url}/v1", api_key="unused-by-the-proxy", max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["tiny-e2e"]
        canary = f"canary-{secrets.token_hex(12)}"
        messages = [{"role": "user", "content": f"say {canary}"}]
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-e2e", messages=messages, max_tokens=10, temperature=0
        )
        assert raw.headers["x-darkbloom-privacy"] == "sealed"
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        chunks = list(
            client.chat.completions.create(
                model="tiny-e2e",
                messages=messages,
                max_tokens=10,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == completion.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
        assert not sealed_net.recorder.contains(canary.encode())
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny-e2e", messages=[], max_tokens=10)

        # The receipt verifies offline with `darkbloom verify`, and a doctored one does not.
        header = raw.headers["x-darkbloom-receipt"]
        payload = verify_receipt_doc(load_receipt(header), expect_request_id=completion.id)
        assert payload.completion_tokens == completion.usage.completion_tokens
        good = tmp_path / "receipt.txt"
        good.write_text(header)
        ok = subprocess.run(
            darkbloom_cmd("verify", str(good), "--request-id", completion.id),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert "receipt OK" in ok.stdout and f"completion_tokens: {payload.completion_tokens}" in ok.stdout
        # Or the header's value pasted as the argument itself (far longer than a file name may be).
        pasted = subprocess.run(
            darkbloom_cmd("verify", header, "--request-id", completion.id),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pasted.returncode == 0, pasted.stderr
        assert pasted.stdout == ok.stdout
        doc = load_receipt(header)
        forged = doc.receipt.payload.replace(
            f'"completion_tokens":{payload.completion_tokens}', '"completion_tokens":1'
        )
        assert forged != doc.receipt.payload
        bad = tmp_path / "forged.json"
        bad.write_bytes(
            msgspec.json.encode(
                msgspec.structs.replace(doc, receipt=msgspec.structs.replace(doc.receipt, payload=forged))
            )
        )
        rejected = subprocess.run(
            darkbloom_cmd("verify", str(bad)), check=False, capture_output=True, text=True, timeout=60
        )
        assert rejected.returncode == 1 and "receipt signature does not verify" in rejected.stderr
