"""Stopping a coordinator (SIGTERM, as a supervisor or `kill` does) while it relays streams."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from darkbloom.testing import Proc, create_key, free_port, start, wait_http

ROOT = Path(__file__).resolve().parents[1]


def _coordinator(tmp_path: Path, drain_s: str) -> tuple[Proc, subprocess.Popen[str], str, str]:
    """A coordinator with a stand-in node that streams 30 tokens at 20 a second (1.5 s) per request."""
    port, home = free_port(), tmp_path / "home"
    coord = start(["serve", "--port", str(port), "--home", str(home)], tmp_path / "serve.log", env={"DARKBLOOM_SHUTDOWN_DRAIN_S": drain_s})
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", proc=coord)
    node = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_standin", "node", base, "--rate", "20", "--tokens", "30"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdout is not None and node.stdout.readline().strip() == "registered"
    return coord, node, base, create_key(f"sqlite:///{home / 'coordinator.db'}", home)


def _stop(node: subprocess.Popen[str]) -> None:
    node.kill()
    node.wait(10)
    if node.stdout is not None:
        node.stdout.close()


def _stream_across_sigterm(coord: Proc, base: str, key: str, then: Callable[[], object] = lambda: None) -> list[dict]:  # type: ignore[type-arg]
    """Stream a chat completion; SIGTERM the coordinator once its first token is in, then call ``then``. Every event."""
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 100}
    events: list[dict] = []  # type: ignore[type-arg]
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                events.append({"done": True})
                continue
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 1:
                coord.popen.send_signal(signal.SIGTERM)
                then()
    return events


def test_sigterm_lets_the_streams_in_flight_finish_then_exits(tmp_path: Path) -> None:
    coord, node, base, key = _coordinator(tmp_path, drain_s="8")
    # A client with a kept-alive connection (as the OpenAI SDK pools them) asks again while the coordinator drains.
    pooled = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert pooled.get("/v1/models").status_code == 200
    refused: list[httpx.Response] = []

    def ask_again() -> None:
        time.sleep(0.5)  # the coordinator hears the signal and starts draining
        refused.append(pooled.post("/v1/chat/completions", json={"model": "bench", "messages": [{"role": "user", "content": "hi"}]}))

    try:
        events = _stream_across_sigterm(coord, base, key, ask_again)
        # (uvicorn re-raises the SIGTERM it handled once it is done: the process ends by that signal, as supervisors expect)
        assert coord.popen.wait(timeout=20) == -signal.SIGTERM, coord.text()[-3000:]
    finally:
        _stop(node)
        coord.kill(signal.SIGKILL)
    assert not any("error" in e for e in events), events[-3:]
    assert sum(1 for e in events if e.get("choices") and e["choices"][0]["delta"].get("content")) == 30
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1] == {"done": True}
    assert "waiting up to 8 s for 1 request(s) in flight" in coord.text()
    # ... and is sent elsewhere at once, in the API's error shape, rather than admitted and cut off later.
    assert refused[0].status_code == 503 and refused[0].headers["retry-after"] == "1"
    assert refused[0].json()["error"]["message"] == "coordinator shutting down; retry the request"
    pooled.close()


def test_a_stream_longer_than_the_drain_ends_with_a_shutdown_error(tmp_path: Path) -> None:
    coord, node, base, key = _coordinator(tmp_path, drain_s="0.3")
    try:
        events = _stream_across_sigterm(coord, base, key)
        # (uvicorn re-raises the SIGTERM it handled once it is done: the process ends by that signal, as supervisors expect)
        assert coord.popen.wait(timeout=20) == -signal.SIGTERM, coord.text()[-3000:]
    finally:
        _stop(node)
        coord.kill(signal.SIGKILL)
    assert 1 < len(events) < 30, events
    assert events[-1]["error"]["message"] == "coordinator shutting down; retry the request"
