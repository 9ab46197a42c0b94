"""The supervisor that keeps a ``node start`` node up: its restart policy, and a real process under it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from darkbloom.node.supervise import HEALTHY_AFTER_S, MAX_DELAY_S, STARTUP_GRACE_S, restart_delay


def test_a_clean_stop_or_a_failed_first_start_is_not_restarted() -> None:
    assert restart_delay(0, 500.0, first_run=False, failures=0) is None
    assert restart_delay(1, STARTUP_GRACE_S - 1, first_run=True, failures=1) is None  # no model, busy home
    # The same status later on is a fault like any other.
    assert restart_delay(1, STARTUP_GRACE_S - 1, first_run=False, failures=1) == 1.0
    assert restart_delay(1, STARTUP_GRACE_S + 1, first_run=True, failures=1) == 1.0


def test_crashes_in_a_row_back_off_up_to_a_minute_and_a_long_run_starts_afresh() -> None:
    delays = [restart_delay(-signal.SIGABRT, 2.0, first_run=False, failures=n) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_DELAY_S, MAX_DELAY_S, MAX_DELAY_S]
    assert restart_delay(-signal.SIGKILL, HEALTHY_AFTER_S, first_run=False, failures=0) == 1.0


def _supervise(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    child = [sys.executable, "-c", script, str(tmp_path / "runs")]
    return subprocess.Popen(
        [sys.executable, "-m", "darkbloom.node.supervise", *child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# Counts its runs in a file; the first two abort (as MLX can at exit), the third stays up until SIGTERM.
FLAKY = """
import os, signal, sys, time
path = sys.argv[1]
runs = (int(open(path).read()) if os.path.exists(path) else 0) + 1
open(path, "w").write(str(runs))
if runs <= 2:
    time.sleep(0.3 * runs)
    os.abort()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("serving", flush=True)
time.sleep(60)
"""


def test_a_crashing_node_is_restarted_and_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    sup = _supervise(tmp_path, FLAKY)
    assert sup.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (line := sup.stdout.readline()):
        lines.append(line.strip())
        if line.strip() == "serving":
            break
    assert lines[-1] == "serving", lines
    assert [re.sub(r"after \d+ s", "after N s", ln) for ln in lines if ln.startswith("supervisor:")] == [
        "supervisor: the node stopped (killed by SIGABRT) after N s; restarting it in 1 s (restart 1)",
        "supervisor: the node stopped (killed by SIGABRT) after N s; restarting it in 2 s (restart 2)",
    ]
    sup.send_signal(signal.SIGTERM)  # forwarded: the node exits 0, and so does its supervisor
    assert sup.wait(10) == 0
    sup.stdout.close()
    assert (tmp_path / "runs").read_text() == "3"


def test_a_node_that_fails_as_it_starts_is_left_down(tmp_path: Path) -> None:
    sup = _supervise(tmp_path, "import sys; print('error: no model could be loaded', flush=True); sys.exit(1)")
    assert sup.stdout is not None
    out, _ = sup.communicate(timeout=30)
    assert sup.returncode == 1
    assert "not restarting it" in out and out.count("no model could be loaded") == 1


# ---- `node status` between a death and a restart -----------------------------------------


def _home_with(tmp_path: Path, *, node: int | None, report_pid: int | None, restarts: int = 0) -> Path:
    """A home as ``node start`` leaves it: this process as the supervisor, ``node`` in the lock, a report."""
    from darkbloom.node.daemon import log_file, pid_file, status_file, supervisor_file
    from darkbloom.node.homelock import LOCK_NAME

    home = tmp_path / "home"
    home.mkdir(parents=True)
    pid_file(home).write_text(str(os.getpid()))
    if node is not None:
        (home / LOCK_NAME).write_text(str(node))
    report = {"coordinator": "http://c", "connected": True, "total_memory_gb": 8, "free_for_load_gb": 4, "slots": []}
    if report_pid is not None:
        report["pid"] = report_pid
    status_file(home).write_text(json.dumps(report))
    if restarts:
        supervisor_file(home).write_text(json.dumps({"restarts": restarts, "last_exit": "killed by SIGKILL", "last_exit_at": 0}))
    log_file(home).write_text("supervisor: the node stopped (killed by SIGKILL) after 30 s; restarting it in 1 s (restart 1)\n")
    return home


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_status_does_not_pass_off_a_dead_nodes_report_as_the_running_one(tmp_path: Path) -> None:
    from darkbloom.node.daemon import format_status, status

    dead = _dead_pid()
    # Between a death and the restart: no node process, only the supervisor and the old report.
    home = _home_with(tmp_path / "a", node=dead, report_pid=dead, restarts=1)
    shown = format_status(status(home), home)
    assert "the node process is not up: the supervisor is restarting it after it died" in shown
    assert "connected" not in shown and "supervisor: the node stopped" in shown

    # Restarted, still loading: a live node, but the report is its predecessor's.
    with subprocess.Popen(["sleep", "30"]) as fresh:
        try:
            home = _home_with(tmp_path / "b", node=fresh.pid, report_pid=dead, restarts=1)
            shown = format_status(status(home), home)
            assert "the node is starting (loading its models); it has not reported yet" in shown
            assert "connected" not in shown

            # Once it reports, its report is shown.
            home = _home_with(tmp_path / "c", node=fresh.pid, report_pid=fresh.pid, restarts=1)
            shown = format_status(status(home), home)
            assert f"(node process {fresh.pid}, kept up by supervisor {os.getpid()})" in shown
            assert "coordinator http://c: connected" in shown
        finally:
            fresh.kill()
