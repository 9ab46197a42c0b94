"""``darkbloom serve`` refuses a database it cannot use in one line, with the URL's password masked."""

from __future__ import annotations

import subprocess
from pathlib import Path

from darkbloom.testing import darkbloom_cmd, free_port


def test_an_unreachable_database_is_one_line_and_its_password_stays_secret(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens here
    url = f"postgresql://postgres:hunter2secret@127.0.0.1:{closed}/nope"
    serve = subprocess.run(
        darkbloom_cmd("serve", "--port", str(free_port()), "--home", str(tmp_path), "--db", url),
        capture_output=True, text=True, timeout=60,
    )
    assert serve.returncode == 1, serve.stderr
    assert f"error: cannot connect to postgresql://postgres:***@127.0.0.1:{closed}/nope: " in serve.stderr
    assert "Traceback" not in serve.stderr
    keys = subprocess.run(
        darkbloom_cmd("keys", "create", "--home", str(tmp_path), "--db", url), capture_output=True, text=True, timeout=60
    )
    assert keys.returncode != 0
    assert "postgres:***@" in keys.stderr
    for out in (serve.stdout, serve.stderr, keys.stdout, keys.stderr):
        assert "hunter2secret" not in out


def test_an_unsupported_database_url_is_named_without_its_password(tmp_path: Path) -> None:
    serve = subprocess.run(
        darkbloom_cmd("serve", "--port", str(free_port()), "--home", str(tmp_path), "--db", "mysql://root:hunter2secret@127.0.0.1/x"),
        capture_output=True, text=True, timeout=60,
    )
    assert serve.returncode == 1
    assert "error: unsupported database URL 'mysql://root:***@127.0.0.1/x'" in serve.stderr
    assert "hunter2secret" not in serve.stdout + serve.stderr


def test_a_setting_in_the_environment_that_is_not_a_number_is_one_line(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "DARKBLOOM_RATE_LIMIT_RPS": "abc"}
    for command in ("serve", "up"):
        out = subprocess.run(
            darkbloom_cmd(command, "--port", str(free_port()), "--home", str(tmp_path)),
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert out.returncode == 1, (command, out.stderr)
        assert out.stderr.strip() == "error: $DARKBLOOM_RATE_LIMIT_RPS must be a number, got 'abc'", out.stderr


def test_a_port_out_of_range_is_a_usage_error_for_every_listening_command(tmp_path: Path) -> None:
    for command in ("serve", "up", "proxy"):
        out = subprocess.run(
            darkbloom_cmd(command, "--port", "99999", "--home", str(tmp_path)), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "--port" in out.stderr and "65535" in out.stderr and "Traceback" not in out.stderr + out.stdout, out.stderr
