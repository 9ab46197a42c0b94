"""Node releases the coordinator advertises: version, platform, download URL, SHA-256.

The table is created here with ``CREATE TABLE IF NOT EXISTS`` at start (both
backends) rather than through the store's numbered migrations, so this module
can land without renumbering anyone's migrations; it can be folded into them
later unchanged (the statement is idempotent).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from darkbloom.protocol.openai import RequestError

PLATFORM_ANY = "any"
_PLATFORM = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,39}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_SQLITE_DDL = """CREATE TABLE IF NOT EXISTS node_releases (
    version TEXT NOT NULL,
    platform TEXT NOT NULL,
    url TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (version, platform)
)"""
_POSTGRES_DDL = _SQLITE_DDL.replace("REAL", "DOUBLE PRECISION")
_COLUMNS = "version, platform, url, sha256, notes, created_at"


@dataclass(frozen=True)
class Release:
    """One registered node release."""

    version: str
    platform: str
    url: str
    sha256: str
    notes: str = ""
    created_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"object": "release", **asdict(self)}


def parse_release(body: Any, now: float | None = None) -> Release:
    """A release from a ``POST /v1/releases`` body, validated.

    Raises:
        RequestError: 400 naming the bad field.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "body must be a JSON object with version, platform, url and sha256")
    for name in ("version", "platform", "url", "sha256"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise RequestError(400, f"'{name}' is required and must be a non-empty string", param=name)
    version = body["version"].strip()
    try:
        Version(version)
    except InvalidVersion:
        raise RequestError(400, f"'version' {version!r} is not a valid version (e.g. 0.2.0)", param="version") from None
    platform = body["platform"].strip().lower()
    if not _PLATFORM.match(platform):
        raise RequestError(400, "'platform' must look like macos-arm64, linux-x86_64 or any", param="platform")
    url = body["url"].strip()
    if not url.startswith(("https://", "http://")):
        raise RequestError(400, "'url' must be an http(s) URL", param="url")
    sha = body["sha256"].strip().lower()
    if not _SHA256.match(sha):
        raise RequestError(400, "'sha256' must be 64 hex digits", param="sha256")
    notes = body.get("notes", "")
    if not isinstance(notes, str):
        raise RequestError(400, "'notes' must be a string", param="notes")
    return Release(version, platform, url, sha, notes[:2000], time.time() if now is None else now)


def newest(releases: list[Release]) -> Release | None:
    """The release with the highest version (a platform-specific one wins a tie with ``any``)."""
    if not releases:
        return None
    return max(releases, key=lambda r: (Version(r.version), r.platform != PLATFORM_ANY))


class ReleaseBook:
    """Releases kept in the coordinator's store (SQLite or PostgreSQL)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._pg = hasattr(store, "pool")

    async def ensure_schema(self) -> None:
        if self._pg:
            await self.store.pool.execute(_POSTGRES_DDL)
        else:
            await self.store.db.execute(_SQLITE_DDL)

    async def get(self, version: str, platform: str) -> Release | None:
        if self._pg:
            row = await self.store.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM node_releases WHERE version = $1 AND platform = $2", version, platform
            )
        else:
            async with self.store.db.execute(
                f"SELECT {_COLUMNS} FROM node_releases WHERE version = ? AND platform = ?", (version, platform)
            ) as cur:
                row = await cur.fetchone()
        return None if row is None else Release(*tuple(row))

    async def add(self, release: Release) -> bool:
        """Register a release; False when that version and platform already exist (nothing changes)."""
        values = (release.version, release.platform, release.url, release.sha256, release.notes, release.created_at)
        if self._pg:
            status = await self.store.pool.execute(
                f"INSERT INTO node_releases ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                *values,
            )
            return bool(status.endswith(" 1"))
        async with self.store.db.execute(
            f"INSERT OR IGNORE INTO node_releases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values
        ) as cur:
            return cur.rowcount == 1

    async def latest(self, platform: str) -> Release | None:
        """The newest release for ``platform`` (or for any platform), or ``None``."""
        if self._pg:
            rows = await self.store.pool.fetch(
                f"SELECT {_COLUMNS} FROM node_releases WHERE platform = $1 OR platform = $2", platform, PLATFORM_ANY
            )
        else:
            async with self.store.db.execute(
                f"SELECT {_COLUMNS} FROM node_releases WHERE platform = ? OR platform = ?", (platform, PLATFORM_ANY)
            ) as cur:
                rows = await cur.fetchall()
        return newest([Release(*tuple(r)) for r in rows])
