"""Helpers for tests and benchmarks: start real processes and wait for them.

Kept in the package (not under tests/) so e2e tests, benchmarks and helper
scripts share one way to start a coordinator and a node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def darkbloom_cmd(*args: str) -> list[str]:
    """Run the installed package's CLI with this interpreter."""
    return [sys.executable, "-m", "darkbloom.cli.main", *args]


@dataclass
class Proc:
    """A started darkbloom process with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    argv: Sequence[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def start(args: Sequence[str], log: Path, env: dict[str, str] | None = None, *, background: bool = False) -> Proc:
    """Start ``darkbloom ARGS`` with stdout and stderr into ``log``.

    ``background`` starts it as a non-interactive shell starts ``cmd &``:
    with SIGINT ignored, which the process inherits.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = darkbloom_cmd(*args)
    if background:  # as sh does it (no preexec_fn, which is unsafe in a process with threads)
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    return Proc(popen, log, list(args))


def wait_http(url: str, timeout: float = 60.0, proc: Proc | None = None) -> None:
    """Wait until ``url`` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.text()}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s" + (f"\n{proc.text()}" if proc else ""))


def wait_model(base_url: str, key: str, model: str, timeout: float = 120.0, present: bool = True) -> None:
    """Wait until ``/v1/models`` lists (or, with ``present=False``, stops listing) ``model``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=2)
            ids = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
            if (model in ids) == present:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"model {model} {'never appeared' if present else 'never left'} at {base_url}")


def create_key(db_url: str, home: Path, *, credit_usd: str | None = None) -> str:
    """A fresh consumer key (on a fresh account, funded with ``credit_usd`` when given), from the CLI."""
    extra = ("--credit", credit_usd) if credit_usd else ()
    out = subprocess.run(
        darkbloom_cmd("keys", "create", "--db", db_url, "--home", str(home), *extra),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]
