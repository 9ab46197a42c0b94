"""``darkbloom node start/stop/status``: the node as a background process with a pid file and a log.

Files under the darkbloom home: ``node.pid`` (the running node's pid),
``node.log`` (its output) and ``node-status.json`` (slots and connection,
rewritten by the running node every few seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def pid_file(home: Path) -> Path:
    return home / "node.pid"


def log_file(home: Path) -> Path:
    return home / "node.log"


def status_file(home: Path) -> Path:
    return home / "node-status.json"


def supervisor_file(home: Path) -> Path:
    """Restarts of the ``node start`` node and its last exit (written by ``darkbloom.node.supervise``)."""
    return home / "node-supervisor.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def running_pid(home: Path) -> int | None:
    """The pid in the pid file if that process is alive; a stale pid file is removed."""
    path = pid_file(home)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


class DaemonError(RuntimeError):
    """Start or stop could not do what was asked; the message says why."""


def start(home: Path, node_args: list[str], *, wait_s: float = 3.0) -> int:
    """Start ``darkbloom node <node_args> --home HOME`` detached, under a supervisor that restarts it
    should it die (``darkbloom.node.supervise``); return the supervisor's pid (the one ``stop`` signals).

    Raises:
        DaemonError: a node is already running from this home, or it died at once (the log's tail is in the message).
    """
    home.mkdir(parents=True, exist_ok=True)
    if (pid := running_pid(home)) is not None:
        raise DaemonError(f"a node is already running from {home} (pid {pid}); `darkbloom node stop` first")
    log = log_file(home).open("ab")
    node = [sys.executable, "-m", "darkbloom.cli.main", "node", *node_args, "--home", str(home)]
    supervisor_file(home).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "darkbloom.node.supervise", "--state", str(supervisor_file(home)), *node]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    pid_file(home).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file(home).unlink(missing_ok=True)
            raise DaemonError(f"the node exited at once (status {proc.returncode}):\n{tail(home, 15)}")
        time.sleep(0.1)
    return proc.pid


NODE_DRAIN_S = 10.0
"""How long a node stopped by SIGTERM lets its requests finish (``stop`` SIGKILLs after 15 s)."""


def stop(home: Path, *, timeout_s: float = 15.0) -> int | None:
    """SIGTERM the running node (through its supervisor), SIGKILL both after ``timeout_s``; return the pid (None if none ran)."""
    pid = running_pid(home)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the supervisor leads its own session: the node goes too
    for path in (pid_file(home), status_file(home), supervisor_file(home)):
        path.unlink(missing_ok=True)
    return pid


def node_pid(home: Path) -> int | None:
    """The pid of the node process itself (under ``node start`` a child of the supervisor), from its home lock."""
    from darkbloom.node.homelock import LOCK_NAME

    try:
        pid = int((home / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def tail(home: Path, lines: int = 10) -> str:
    try:
        return "\n".join(log_file(home).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class NodeStatus:
    pid: int | None
    report: dict
    log_tail: str
    restarts: dict = field(default_factory=dict)


def status(home: Path) -> NodeStatus:
    """Whether a node runs from ``home``, its last self-report and its log's tail."""
    pid = running_pid(home)
    report: dict = {}
    restarts: dict = {}
    if pid is not None:
        report, restarts = _read_json(status_file(home)), _read_json(supervisor_file(home))
    return NodeStatus(pid, report, tail(home), restarts)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def format_status(st: NodeStatus, home: Path) -> str:
    if st.pid is None:
        return f"no node is running from {home}" + (
            f"\nlast log lines ({log_file(home)}):\n{st.log_tail}" if st.log_tail else ""
        )
    child = node_pid(home)
    under = f" (node process {child}, kept up by supervisor {st.pid})" if child not in (None, st.pid) else ""
    what = "node supervisor running" if child is None else "node running"
    out = [f"{what}, pid {st.pid}{under}, log {log_file(home)}"]
    if st.restarts.get("restarts"):
        ago = max(0, time.time() - float(st.restarts.get("last_exit_at", time.time())))
        out.append(f"restarted {st.restarts['restarts']} time(s) after it died; last: {st.restarts.get('last_exit')}, {ago:.0f} s ago")
    rep = st.report
    # A report left by a node that has since died must not pass for this one's.
    if child is None:  # the supervisor runs, its node does not (yet): starting, or between a death and a restart
        doing = "restarting it after it died" if st.restarts else "starting it"
        out.append(f"the node process is not up: the supervisor is {doing}")
        out.append(f"last log lines ({log_file(home)}):\n{st.log_tail}")
        return "\n".join(out)
    if rep.get("pid", child) != child:
        out.append("the node is starting (loading its models); it has not reported yet")
        return "\n".join(out)
    if rep:
        out.append(f"coordinator {rep.get('coordinator')}: {'connected' if rep.get('connected') else 'not connected'}")
        out.append(f"free for load: {rep.get('free_for_load_gb')} GiB of {rep.get('total_memory_gb')} GiB RAM")
        for s in rep.get("slots", []):
            out.append(
                f"  {s['model']:<32} {s['state']:<14} running {s['num_running']}/{s['max_concurrency']}"
                f"  KV tokens {s['active_token_budget_used']}/{s['active_token_budget_max']}"
                f"  decode {s['observed_decode_tps']} tok/s  prefill {s['observed_prefill_tps']} tok/s"
            )
    return "\n".join(out)
