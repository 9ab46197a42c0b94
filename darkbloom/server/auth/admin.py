"""The admin credential: created on first start, printed once, kept 0600 under the home.

Only its SHA-256 is kept in memory by the coordinator; the clear key lives in
``<home>/admin_key`` for the operator (and ``darkbloom admin``/``tui`` read it).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from starlette.requests import Request

from darkbloom.node.identity import write_private
from darkbloom.protocol.openai import RequestError
from darkbloom.server.auth.keys import hash_key

ADMIN_PREFIX = "dba-"


def admin_key_path(home: Path) -> Path:
    return home / "admin_key"


def ensure_admin_key(home: Path) -> tuple[str, bool]:
    """The admin key, creating it on first start.

    ``$DARKBLOOM_ADMIN_KEY`` wins when set (for coordinators whose home is not
    writable, or keys kept in a secret manager).

    Returns:
        The key and whether it was created just now (print it once if so).
    """
    env = os.environ.get("DARKBLOOM_ADMIN_KEY", "").strip()
    if env:
        return env, False
    path = admin_key_path(home)
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key, False
    key = ADMIN_PREFIX + secrets.token_urlsafe(32)
    write_private(path, key + "\n")
    return key, True


def read_admin_key(home: Path) -> str | None:
    """The admin key for clients on this machine: env var, else the key file."""
    env = os.environ.get("DARKBLOOM_ADMIN_KEY", "").strip()
    if env:
        return env
    try:
        return admin_key_path(home).read_text().strip() or None
    except OSError:
        return None


def require_admin(request: Request) -> None:
    """Refuse unless the request carries the admin key as a Bearer token.

    Raises:
        RequestError: 401 without a key, 403 with a wrong one.
    """
    from darkbloom.server.api.auth import bearer_key

    key = bearer_key(request)
    expected: str | None = getattr(request.app.state, "admin_key_hash", None)
    if not key:
        raise RequestError(401, "admin endpoint: send 'Authorization: Bearer <admin key>'", type="authentication_error", code="missing_api_key")
    if expected is None or not hmac.compare_digest(hash_key(key), expected):
        raise RequestError(403, "this endpoint needs the admin credential", type="permission_error", code="forbidden")
