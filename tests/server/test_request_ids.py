"""Request ids: 128 random bits, never repeated, not even by a forked process (holds are keyed by them)."""

from __future__ import annotations

import os
import re

from darkbloom.server.api.adapter import _random_id


def test_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = [_random_id() for _ in range(5000)]  # past the end of several 4 KiB pools
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_ids_of_its_own() -> None:
    _random_id()  # the parent has a pool the child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, " ".join(_random_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode().split()
    os.waitpid(pid, 0)
    parent = [_random_id() for _ in range(4)]
    assert len(child) == 4 and not set(child) & set(parent)
