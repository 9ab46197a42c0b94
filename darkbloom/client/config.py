"""Where the terminal apps find the coordinator and their keys.

Each setting comes from, in order: a command-line flag, the environment
(``DARKBLOOM_URL``, ``DARKBLOOM_API_KEY``, ``DARKBLOOM_ADMIN_KEY``), then the
files under the darkbloom home: ``config.json`` (url and api_key, written by
``darkbloom up``) and, for a coordinator on this machine only, ``admin_key``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8420"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ClientSettings:
    """The resolved coordinator URL and keys, and where each came from (for error messages)."""

    url: str
    api_key: str | None
    admin_key: str | None
    home: Path
    url_source: str = "default"


def read_config_file(home: Path) -> dict[str, str]:
    """``<home>/config.json`` as written by ``darkbloom up``, or ``{}``."""
    try:
        data = json.loads((home / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _admin_key_file(home: Path) -> str | None:
    try:
        return (home / "admin_key").read_text().strip() or None
    except OSError:
        return None


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def resolve_settings(
    home: Path,
    url: str | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    *,
    use_admin: bool = True,
) -> ClientSettings:
    """Resolve flags, environment and config file into one ``ClientSettings``.

    The admin key file under the home belongs to a coordinator on this
    machine, so it is only offered to a loopback URL: the credential never
    leaves the machine by accident.
    """
    saved = read_config_file(home)
    if url:
        chosen, source = url, "--url"
    elif _env("DARKBLOOM_URL"):
        chosen, source = _env("DARKBLOOM_URL") or "", "DARKBLOOM_URL"
    elif saved.get("url"):
        chosen, source = saved["url"], str(home / "config.json")
    else:
        chosen, source = DEFAULT_URL, "default"
    key = api_key or _env("DARKBLOOM_API_KEY") or saved.get("api_key") or None
    admin = None
    if use_admin:
        admin = admin_key or _env("DARKBLOOM_ADMIN_KEY")
        host = urlsplit(chosen if "://" in chosen else f"http://{chosen}").hostname or ""
        if admin is None and host in LOOPBACK:
            admin = _admin_key_file(home)
    return ClientSettings(url=chosen, api_key=key, admin_key=admin, home=home, url_source=source)
