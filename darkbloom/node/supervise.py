"""Keep a background node up: ``node start`` runs the node under this supervisor.

    python -m darkbloom.node.supervise [--state FILE] NODE_COMMAND...

The supervisor starts the node command, waits for it, and starts it again
when it dies (a crash, an abort in MLX, the kernel's OOM killer), after a
backoff of 1, 2, 4 ... up to 60 s that starts afresh once a run has lasted
a minute. It does not restart a node that stopped cleanly (status 0) or
whose first run failed at start (status 1 within 10 s: no model, a busy
home), which would only fail again. SIGTERM (``node stop``) goes to the
node, which drains; the supervisor then exits with the node's status. Its
lines go to the node's log, beside the node's own; with ``--state`` it also
keeps its restart count and the last exit in FILE (JSON) for ``node status``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

STARTUP_GRACE_S = 10.0
"""A first run that exits with status 1 sooner failed at start-up (the node said why): not restarted."""
HEALTHY_AFTER_S = 60.0
"""A run at least this long resets the backoff."""
MAX_DELAY_S = 60.0


def restart_delay(status: int, ran_s: float, *, first_run: bool, failures: int) -> float | None:
    """Seconds to wait before starting the node again, or ``None`` to stop supervising.

    Args:
        status: the node's exit status (negative: killed by that signal).
        ran_s: how long that run lasted.
        first_run: it was the first run since ``node start``.
        failures: runs in a row that ended early (shorter than ``HEALTHY_AFTER_S``), this one included.
    """
    if status == 0:
        return None
    if first_run and status == 1 and ran_s < STARTUP_GRACE_S:
        return None
    if ran_s >= HEALTHY_AFTER_S:
        return 1.0
    return min(MAX_DELAY_S, 2.0 ** (max(1, failures) - 1))


def describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    """Run ``argv`` until it stops cleanly or is stopped; restart it when it dies."""

    def __init__(self, argv: list[str], *, state: Path | None = None, sleep: float = 0.1) -> None:
        self.argv = argv
        self.state = state
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self._tick = sleep

    def say(self, line: str) -> None:
        print(f"supervisor: {line}", flush=True)

    def stop(self, signum: int, frame: FrameType | None = None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # the node drains its requests, then exits

    def run(self) -> int:
        first, failures, restarts = True, 0, 0
        while True:
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            if self.stopping:  # SIGTERM came while it was being started
                self.child.send_signal(signal.SIGTERM)
            status = self.child.wait()
            ran = time.monotonic() - started
            if self.stopping:
                return max(status, 0)
            failures = 0 if ran >= HEALTHY_AFTER_S else failures + 1
            delay = restart_delay(status, ran, first_run=first, failures=failures)
            if delay is None:
                if status != 0:
                    self.say(f"the node failed as it started ({describe(status)}); not restarting it")
                return status if status > 0 else 1
            restarts += 1
            self.say(f"the node stopped ({describe(status)}) after {ran:.0f} s; restarting it in {delay:.0f} s (restart {restarts})")
            if self.state is not None:
                record = {"restarts": restarts, "last_exit": describe(status), "last_exit_at": time.time()}
                self.state.write_text(json.dumps(record) + "\n")
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(self._tick)
            if self.stopping:
                return 0
            first = False


def main(argv: list[str]) -> int:
    state = None
    if argv[:1] == ["--state"] and len(argv) > 1:
        state, argv = Path(argv[1]), argv[2:]
    if not argv:
        print("usage: python -m darkbloom.node.supervise [--state FILE] NODE_COMMAND...", file=sys.stderr)
        return 2
    sup = Supervisor(argv, state=state)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
