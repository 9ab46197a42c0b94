"""`darkbloom up`, as the README's first command runs it: one process, a key, a streamed answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai

from darkbloom.testing import Proc, darkbloom_cmd, free_port, start


def _wait_for_key(proc: Proc, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.text().splitlines():
            if line.startswith("OPENAI_API_KEY="):
                return line.split("=", 1)[1].strip()
        if proc.popen.poll() is not None:
            raise AssertionError(f"darkbloom up exited with {proc.popen.returncode}:\n{proc.text()}")
        time.sleep(0.2)
    raise AssertionError(f"darkbloom up printed no key within {timeout} s:\n{proc.text()}")


def test_up_serves_the_demo_model_to_the_openai_sdk_and_keeps_its_key(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    # The reference BLAS, whether or not this machine has OpenBLAS: `up` must say so.
    env = {"DARKBLOOM_DEMO_MODEL": "tiny", "DARKBLOOM_NODE_METRICS_PORT": "off", "DARKBLOOM_BLAS": "/nonexistent/libopenblas.so.0"}
    up = start(["up", "--home", str(home), "--port", str(port)], tmp_path / "up.log", env=env)
    try:
        key = _wait_for_key(up)
        started = up.text()
        assert f"http://127.0.0.1:{port}/v1" in started
        if sys.platform == "linux":
            assert "warning: MLX is using the reference BLAS" in started, started
        # Waiting for its node to load, `up` does not fill the terminal with access lines of its own polls.
        assert '"http request"' not in started, started
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        models = [m.id for m in client.models.list()]
        assert models == ["darkbloom-tiny"]
        pieces = [
            c.choices[0].delta.content
            for c in client.chat.completions.create(
                model=models[0], messages=[{"role": "user", "content": "hello"}], stream=True, max_tokens=8
            )
            if c.choices and c.choices[0].delta.content
        ]
        assert len(pieces) > 1
        config = home / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text()) == {"url": f"http://127.0.0.1:{port}", "api_key": key}
    finally:
        up.kill(signal.SIGINT)  # Ctrl-C (SIGKILL after 10 s if that did not stop it)
    assert up.popen.returncode == 0, f"Ctrl-C did not stop `up` cleanly:\n{up.text()[-2000:]}"
    # The node stops with the coordinator; it does not announce losing it and retrying.
    assert "reconnecting" not in up.text(), up.text()[-2000:]

    # A second `up` on the same home reuses the saved key rather than minting another. This one is
    # started as `darkbloom up &` in a script starts it, with SIGINT ignored: SIGINT still stops it
    # (uvicorn takes the signal, and the node goes down with the coordinator).
    again = start(["up", "--home", str(home), "--port", str(port)], tmp_path / "up2.log", env=env, background=True)
    try:
        assert _wait_for_key(again) == key
    finally:
        again.kill(signal.SIGINT)
    assert again.popen.returncode == 0, f"SIGINT did not stop a background `up` cleanly:\n{again.text()[-2000:]}"


def test_a_busy_port_or_a_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    """What a newcomer gets wrong first is told in one line, before any slow work, with exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for cmd in (["up"], ["serve"]):
            home = tmp_path / f"home-{cmd[0]}"
            done = subprocess.run(
                darkbloom_cmd(*cmd, "--home", str(home), "--port", str(port)), capture_output=True, text=True, timeout=60,
                env={**os.environ, "DARKBLOOM_DEMO_MODEL": "tiny"},
            )
            assert done.returncode == 1, done.stderr
            assert f"error: port {port} on 127.0.0.1 is in use (" in done.stderr
            assert "is another coordinator (or `darkbloom up`) running? pass --port to pick another" in done.stderr
            assert "Traceback" not in done.stderr
        assert not (tmp_path / "home-up").exists(), "up did work before finding its port taken"

    done = subprocess.run(
        darkbloom_cmd("up", "--home", str(tmp_path / "home"), "--port", str(free_port()), "--model", str(tmp_path / "nowhere")),
        capture_output=True, text=True, timeout=120, env={**os.environ, "DARKBLOOM_NODE_METRICS_PORT": "off"},
    )
    assert done.returncode == 1, done.stderr
    assert "error: no model could be loaded; pass --model with a local MLX model directory" in done.stderr
    assert "Traceback" not in done.stderr


# `darkbloom up` whose node takes its time to load (a large model, a slow disk): the coordinator runs, the
# node's start never finishes. Only the load is stood in for; the coordinator and the signal are real.
_SLOW_NODE_UP = """
import asyncio, sys
import darkbloom.local

async def loading(cfg, say=print):
    say("node: still loading its model")
    await asyncio.sleep(3600)

darkbloom.local.run_node = loading
from darkbloom.cli.main import app
sys.argv = ["darkbloom", *sys.argv[1:]]
app()
"""


def test_sigint_while_the_node_is_still_loading_stops_up_at_once(tmp_path: Path) -> None:
    """Started as a script's `darkbloom up &` (SIGINT ignored, so only uvicorn's handler hears it)."""
    log = tmp_path / "up.log"
    env = {**os.environ, "DARKBLOOM_DEMO_MODEL": "tiny", "DARKBLOOM_NODE_METRICS_PORT": "off", "PYTHONUNBUFFERED": "1"}
    up = [sys.executable, "-c", _SLOW_NODE_UP, "up", "--home", str(tmp_path / "home"), "--port", str(free_port())]
    cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *up]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "node: still loading its model" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=15) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGINT did not stop `up` while its node was loading:\n{log.read_text()}") from None
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_lets_a_stream_in_flight_finish_before_up_stops(tmp_path: Path) -> None:
    """A newcomer stopping `up` mid-answer: the answer ends whole, then `up` exits cleanly."""
    port = free_port()
    env = {"DARKBLOOM_DEMO_MODEL": "tiny", "DARKBLOOM_NODE_METRICS_PORT": "off"}
    up = start(["up", "--home", str(tmp_path / "home"), "--port", str(port)], tmp_path / "up.log", env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=_wait_for_key(up), max_retries=0)
        finish = []
        stream = client.chat.completions.create(
            model="darkbloom-tiny", messages=[{"role": "user", "content": "hello"}], stream=True, max_tokens=1000
        )
        for i, chunk in enumerate(stream):
            if i == 1:
                up.popen.send_signal(signal.SIGINT)  # Ctrl-C, once, while the answer streams
            if chunk.choices and chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        assert finish in (["length"], ["stop"]), up.text()[-2000:]  # whole: no error event, no cut-off
        assert up.popen.wait(timeout=30) == 0, up.text()[-2000:]
    finally:
        if up.popen.poll() is None:
            up.kill(signal.SIGKILL)
    assert "reconnecting" not in up.text() and "Traceback" not in up.text(), up.text()[-2000:]
