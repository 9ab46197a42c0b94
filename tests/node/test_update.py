"""``darkbloom node update`` against a real coordinator and a real download server.

The release artifact is a tiny real wheel; a good hash installs it with the
real pip (into a throwaway ``--target`` folder, never the test environment),
a wrong hash is refused before pip ever runs.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from darkbloom.node.update import UpdateError, current_platform, update
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.runner import uvicorn_server
from darkbloom.server.settings import Settings
from darkbloom.testing import darkbloom_cmd, free_port


@dataclass
class Site:
    coordinator: str
    downloads: str
    admin: dict[str, str]
    folder: Path

    def register(self, version: str, artifact: Path, sha256: str | None = None) -> None:
        body = {
            "version": version,
            "platform": current_platform(),
            "url": f"{self.downloads}/{artifact.name}",
            "sha256": sha256 or hashlib.sha256(artifact.read_bytes()).hexdigest(),
        }
        resp = httpx.post(f"{self.coordinator}/v1/releases", json=body, headers=self.admin)
        assert resp.status_code == 201, resp.text


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A coordinator under uvicorn and a static file server for artifacts, both on 127.0.0.1."""
    settings = Settings(home=tmp_path / "coord", db_url=f"sqlite:///{tmp_path / 'c.db'}", port=free_port())
    server = uvicorn_server(settings, log_level="warning")
    coord_thread = threading.Thread(target=server.run, daemon=True)
    coord_thread.start()
    folder = tmp_path / "dl"
    folder.mkdir()
    files = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    files_thread = threading.Thread(target=files.serve_forever, daemon=True)
    files_thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and coord_thread.is_alive(), "coordinator did not start"
            time.sleep(0.05)
        admin = {"Authorization": f"Bearer {read_admin_key(settings.home)}"}
        yield Site(f"http://127.0.0.1:{settings.port}", f"http://127.0.0.1:{files.server_port}", admin, folder)
    finally:
        server.should_exit = True
        coord_thread.join(15)
        files.shutdown()
        files.server_close()


def tiny_wheel(folder: Path, name: str = "dbprobe", version: str = "9.9.9") -> Path:
    """A minimal valid pure-Python wheel."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(n, text)
    return path


def test_newer_release_with_the_right_hash_is_installed(site: Site, tmp_path: Path) -> None:
    wheel = tiny_wheel(site.folder)
    site.register("9.9.9", wheel)
    target = tmp_path / "site-packages"
    said: list[str] = []
    installed = update(
        site.coordinator,
        current="0.1.0",
        pip_args=["--target", str(target), "--no-index", "--no-deps"],
        say=said.append,
    )
    assert installed == "9.9.9"
    assert (target / "dbprobe-9.9.9.dist-info" / "METADATA").is_file()
    assert (target / "dbprobe" / "__init__.py").read_text() == "VERSION = '9.9.9'\n"
    assert any("SHA-256 verified" in line for line in said)


def test_hash_mismatch_is_refused_and_nothing_is_installed(site: Site, tmp_path: Path) -> None:
    wheel = tiny_wheel(site.folder)
    site.register("9.9.9", wheel, sha256="0" * 64)
    target = tmp_path / "site-packages"
    with pytest.raises(UpdateError, match="SHA-256 mismatch"):
        update(
            site.coordinator,
            current="0.1.0",
            pip_args=["--target", str(target), "--no-index", "--no-deps"],
            say=lambda _: None,
        )
    assert not target.exists()


def test_same_or_older_release_or_none_installs_nothing(site: Site, tmp_path: Path) -> None:
    said: list[str] = []
    assert update(site.coordinator, current="0.1.0", say=said.append) is None
    assert "no release is registered" in said[-1]
    site.register("0.1.0", tiny_wheel(site.folder, version="0.1.0"))
    assert update(site.coordinator, current="0.1.0", say=said.append) is None
    assert "up to date" in said[-1]
    site.register("0.2.0", tiny_wheel(site.folder, version="0.2.0"))
    assert update(site.coordinator, current="0.1.0", check_only=True, say=said.append) == "0.2.0"
    assert "0.2.0 is available" in said[-1]


def test_cli_refuses_a_tampered_release(site: Site) -> None:
    site.register("99.0.0", tiny_wheel(site.folder, version="99.0.0"), sha256="f" * 64)
    proc = subprocess.run(
        darkbloom_cmd("node", "update", "--coordinator", site.coordinator), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "SHA-256 mismatch" in proc.stderr and "refusing to install" in proc.stderr
    check = subprocess.run(
        darkbloom_cmd("node", "update", "--check", "-c", site.coordinator), capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0 and "99.0.0 is available" in check.stderr
