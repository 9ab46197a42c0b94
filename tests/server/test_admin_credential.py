"""The admin credential is created once, 0600, and guards admin-only checks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from darkbloom.protocol.openai import RequestError
from darkbloom.server.auth.admin import admin_key_path, ensure_admin_key, require_admin
from darkbloom.server.auth.keys import hash_key


def test_created_once_with_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARKBLOOM_ADMIN_KEY", raising=False)
    key, created = ensure_admin_key(tmp_path)
    assert created and key.startswith("dba-")
    assert stat.S_IMODE(admin_key_path(tmp_path).stat().st_mode) == 0o600
    again, created_again = ensure_admin_key(tmp_path)
    assert (again, created_again) == (key, False)


def test_require_admin(tmp_path: Path) -> None:
    async def guarded(request: Request) -> JSONResponse:
        try:
            require_admin(request)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/x", guarded)])
    app.state.admin_key_hash = hash_key("dba-right")
    client = TestClient(app)
    assert client.get("/x").status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer dba-wrong"}).status_code == 403
    assert client.get("/x", headers={"Authorization": "Bearer dba-right"}).json() == {"ok": True}
