"""``darkbloom node update``: install the coordinator's newest release when it is newer.

Asks the coordinator for the latest release registered for this platform,
compares it with the running version, downloads it, and installs it with pip
into the interpreter darkbloom runs from, but only when the download's
SHA-256 matches the one the release was registered with.
"""

from __future__ import annotations

import hashlib
import platform as platform_mod
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from packaging.version import InvalidVersion, Version

from darkbloom import __version__


class UpdateError(RuntimeError):
    """The update could not be checked, downloaded, verified or installed."""


@dataclass(frozen=True)
class ReleaseInfo:
    """The coordinator's answer to ``GET /v1/releases/latest``."""

    version: str
    platform: str
    url: str
    sha256: str


def current_platform() -> str:
    """This machine as release platforms name it: ``macos-arm64``, ``linux-x86_64``, ``linux-aarch64``..."""
    system = {"Darwin": "macos", "Linux": "linux"}.get(platform_mod.system(), platform_mod.system().lower())
    machine = platform_mod.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "macos" else "aarch64"}.get(machine, machine)
    return f"{system}-{machine}"


def latest_release(coordinator: str, platform: str, client: httpx.Client) -> ReleaseInfo | None:
    """The newest release the coordinator has for ``platform``; ``None`` when none is registered.

    Raises:
        UpdateError: the coordinator cannot be reached or answers nonsense.
    """
    url = coordinator.rstrip("/") + "/v1/releases/latest"
    try:
        resp = client.get(url, params={"platform": platform})
    except httpx.HTTPError as exc:
        raise UpdateError(f"cannot reach {url}: {exc}") from exc
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise UpdateError(f"{url} answered {resp.status_code}: {resp.text[:200]}")
    try:
        body = resp.json()
        return ReleaseInfo(str(body["version"]), str(body["platform"]), str(body["url"]), str(body["sha256"]).lower())
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateError(f"{url} sent a release this version cannot read: {exc}") from exc


def is_newer(candidate: str, current: str = __version__) -> bool:
    try:
        return Version(candidate) > Version(current)
    except InvalidVersion as exc:
        raise UpdateError(f"release version {candidate!r} is not a valid version") from exc


def download_verified(release: ReleaseInfo, dest_dir: Path, client: httpx.Client) -> Path:
    """Download the release into ``dest_dir`` and check its SHA-256.

    Raises:
        UpdateError: the download failed, or its hash is not the registered one
            (the file is deleted: nothing unverified is left to install).
    """
    name = Path(urlsplit(release.url).path).name or "darkbloom-release.whl"
    path = dest_dir / name
    digest = hashlib.sha256()
    try:
        with client.stream("GET", release.url) as resp, open(path, "wb") as out:
            if resp.status_code != 200:
                raise UpdateError(f"download of {release.url} answered {resp.status_code}")
            for block in resp.iter_bytes():
                digest.update(block)
                out.write(block)
    except httpx.HTTPError as exc:
        path.unlink(missing_ok=True)
        raise UpdateError(f"download of {release.url} failed: {exc}") from exc
    except UpdateError:
        path.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != release.sha256:
        path.unlink(missing_ok=True)
        raise UpdateError(
            f"SHA-256 mismatch for {release.url}: the release says {release.sha256}, "
            f"the download is {digest.hexdigest()}; refusing to install it"
        )
    return path


def pip_install(artifact: Path, python: str = sys.executable, pip_args: Sequence[str] = ()) -> None:
    """Install a verified artifact with pip into ``python``'s environment.

    Raises:
        UpdateError: pip failed (its output is in the message).
    """
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        *pip_args,
        str(artifact),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UpdateError(f"pip could not install {artifact.name}:\n{(proc.stderr or proc.stdout)[-2000:]}")


def update(
    coordinator: str,
    *,
    check_only: bool = False,
    python: str = sys.executable,
    pip_args: Sequence[str] = (),
    platform: str | None = None,
    current: str = __version__,
    say: Callable[[str], None] = print,
) -> str | None:
    """Check for a newer release and install it unless ``check_only``.

    Returns:
        The version installed (or, with ``check_only``, available), or ``None`` when up to date.

    Raises:
        UpdateError: anything went wrong; nothing is installed then.
    """
    plat = platform or current_platform()
    with httpx.Client(timeout=httpx.Timeout(30.0, read=300.0), follow_redirects=True) as client:
        release = latest_release(coordinator, plat, client)
        if release is None:
            say(f"no release is registered for {plat} at {coordinator}; running {current}")
            return None
        if not is_newer(release.version, current):
            say(f"up to date: running {current}, latest for {plat} is {release.version}")
            return None
        if check_only:
            say(
                f"release {release.version} is available (running {current}); run 'darkbloom node update' to install it"
            )
            return release.version
        with tempfile.TemporaryDirectory(prefix="darkbloom-update-") as tmp:
            say(f"downloading {release.version} from {release.url}")
            artifact = download_verified(release, Path(tmp), client)
            say(f"SHA-256 verified; installing {artifact.name}")
            pip_install(artifact, python, pip_args)
    say(f"updated {current} -> {release.version}; restart 'darkbloom node' to run it")
    return release.version
