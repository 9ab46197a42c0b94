"""``install.sh`` in a fresh HOME on this machine: shellcheck-clean, installs a working ``darkbloom``, twice.

Dependencies come from the test environment's site-packages (``DARKBLOOM_REUSE_SITE``) and pip
runs with ``--no-index``, so the test needs no network and takes seconds; darkbloom itself
is really built and installed into the new venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.node.test_update import Site, site  # noqa: F401  (live coordinator + download server)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "install.sh"


def shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck); install.sh must be checked")
    return subprocess.run([exe, "--shell=sh", str(path)], capture_output=True, text=True, timeout=60)


def offline_env(home: Path, pip_args: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKBLOOM_", "PIP_", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(home),
        PATH="/usr/bin:/bin",
        DARKBLOOM_PYTHON=sys.executable,
        DARKBLOOM_PIP_ARGS=pip_args,
        DARKBLOOM_REUSE_SITE=sysconfig.get_paths()["purelib"],
        SHELL="/bin/sh",
    )
    return env


def installed_darkbloom(home: Path) -> str:
    """Which darkbloom package the installed venv imports (run outside any checkout)."""
    venv_python = home / ".darkbloom" / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(venv_python), "-c", "import darkbloom; print(darkbloom.__file__)"],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=60,
    )
    return out.stdout.strip()


def test_install_sh_is_shellcheck_clean() -> None:
    result = shellcheck(SCRIPT)
    assert result.returncode == 0, result.stdout


def test_fresh_home_install_gives_a_working_darkbloom_and_is_safe_twice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = offline_env(home, "--no-deps --no-build-isolation --no-index")
    for attempt in (1, 2):
        run = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert run.returncode == 0, f"attempt {attempt}:\n{run.stderr}"
        assert "darkbloom node doctor" in run.stderr
    link = home / ".local" / "bin" / "darkbloom"
    assert link.is_symlink() and Path(os.readlink(link)) == home / ".darkbloom" / "venv" / "bin" / "darkbloom"
    help_run = subprocess.run([str(link), "--help"], env=env, capture_output=True, text=True, cwd=home, timeout=120)
    assert help_run.returncode == 0 and "darkbloom" in help_run.stdout and "node" in help_run.stdout
    assert installed_darkbloom(home).startswith(str(home / ".darkbloom" / "venv")), (
        "darkbloom must be installed into the venv"
    )
    assert "Linux on" in run.stderr and "MLX backend" in run.stderr
    profile = (home / ".profile").read_text()
    assert profile.count("added by darkbloom install.sh") == 1, "PATH is added once, however often it runs"
    login = subprocess.run(
        ["sh", "-lc", "command -v darkbloom"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=home,
        timeout=60,
    )
    assert login.stdout.strip() == str(link), "a new login shell finds darkbloom on PATH"


def test_served_installer_verifies_the_registered_release(site: Site, tmp_path: Path) -> None:  # noqa: F811
    wheels = site.folder
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(wheels.glob("darkbloom-*.whl"))
    script = httpx.get(f"{site.coordinator}/install.sh")
    assert script.status_code == 200
    assert f"served_by='{site.coordinator}'" in script.text
    served = tmp_path / "served-install.sh"
    served.write_text(script.text)
    assert shellcheck(served).returncode == 0

    # A release whose registered hash is not the artifact's: refused before any venv exists.
    site.register("0.0.1", wheel, sha256="0" * 64)
    bad_home = tmp_path / "bad"
    bad_home.mkdir()
    bad = subprocess.run(
        ["sh"],
        input=script.text,
        env=offline_env(bad_home, "--no-deps --no-index"),
        capture_output=True,
        text=True,
        cwd=bad_home,
        timeout=120,
    )
    assert bad.returncode != 0 and "SHA-256 mismatch" in bad.stderr
    assert not (bad_home / ".darkbloom" / "venv").exists() and not (bad_home / ".local" / "bin" / "darkbloom").exists()

    # The genuine release, newer: downloaded, verified, installed, as `curl .../install.sh | sh` would.
    site.register("0.0.2", wheel, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    home = tmp_path / "good"
    home.mkdir()
    good = subprocess.run(
        ["sh"],
        input=script.text,
        env=offline_env(home, "--no-deps --no-index"),
        capture_output=True,
        text=True,
        cwd=home,
        timeout=300,
    )
    assert good.returncode == 0, good.stderr
    assert "release 0.0.2 downloaded and its SHA-256 verified" in good.stderr
    assert (
        subprocess.run(
            [str(home / ".local" / "bin" / "darkbloom"), "--help"], capture_output=True, timeout=120
        ).returncode
        == 0
    )
    assert installed_darkbloom(home).startswith(str(home / ".darkbloom" / "venv"))
