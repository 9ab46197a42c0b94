"""One node per home.

The home holds the node's identity (its keys, hence its node id). Two
processes serving from one home register under one id, and the coordinator
lets the newer connection replace the older: each then knocks the other off
every second or so, for as long as both run. So a node holds an exclusive
lock on ``<home>/node.lock`` while it runs (foreground, ``node start``, or
inside ``darkbloom up``), and a second one on the same home refuses to start.

The lock is ``flock``'s: the kernel drops it when the process ends, however
it ends, so a crashed node never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "node.lock"


class HomeBusy(RuntimeError):
    """Another running node holds this home."""


def hold_home(home: Path) -> IO[str]:
    """Lock ``home`` for this process's node; keep the returned file open as long as the node runs.

    Raises:
        HomeBusy: another process holds it (the message names its pid and what to do).
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_NAME
    f = open(path, "a+")  # never truncate before holding the lock: the holder's pid is in there
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise HomeBusy(
            f"another node is already running from {home}{who}, with this home's node identity. Stop it first "
            f"(`darkbloom node stop` if `node start` started it, else Ctrl-C where it runs), or give this one its own --home"
        ) from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
