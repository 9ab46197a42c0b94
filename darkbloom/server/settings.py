"""Coordinator settings: parsed once by the CLI, passed to ``create_app``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from darkbloom.server.routing.state import RoutingConfig


def darkbloom_home(explicit: str | Path | None = None) -> Path:
    """The darkbloom home: ``--home``, else ``$DARKBLOOM_HOME``, else ``~/.darkbloom``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("DARKBLOOM_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".darkbloom"


def default_db_url(home: Path) -> str:
    """``$DARKBLOOM_DATABASE_URL``, else an SQLite file under the home."""
    return os.environ.get("DARKBLOOM_DATABASE_URL") or f"sqlite:///{home / 'coordinator.db'}"


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator reads at start."""

    home: Path = field(default_factory=darkbloom_home)
    db_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8420
    heartbeat_interval_s: float = 5.0
    node_timeout_s: float = 90.0
    request_timeout_s: float = 600.0
    first_token_timeout_s: float = 120.0
    max_body_bytes: int = 16 * 1024 * 1024
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def resolved_db_url(self) -> str:
        return self.db_url or default_db_url(self.home)
