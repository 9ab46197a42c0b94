"""``POST /v1/releases`` (admin) registers a node release; ``GET /v1/releases/latest`` finds the newest.

Nodes ask for the latest release of their platform (``darkbloom node
update``); the installer asks too, to verify what it downloads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

import darkbloom
from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.errors import error_response, read_body
from darkbloom.server.auth.admin import require_admin
from darkbloom.server.releases import ReleaseBook, parse_release


async def register_release(request: Request) -> Response:
    try:
        require_admin(request)
        raw = await read_body(request)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None
        release = parse_release(body)
        book: ReleaseBook = request.app.state.releases
        if await book.add(release):
            return JSONResponse(release.to_json(), status_code=201)
        existing = await book.get(release.version, release.platform)
        if existing is not None and (existing.url, existing.sha256) == (release.url, release.sha256):
            return JSONResponse(existing.to_json(), status_code=200)  # the same registration again: idempotent
        raise RequestError(
            409,
            f"release {release.version} for {release.platform} is already registered with another url or sha256; publish a new version",
            code="release_exists",
        )
    except RequestError as err:
        return error_response(err)


async def latest_release(request: Request) -> Response:
    platform = request.query_params.get("platform", "").strip().lower()
    if not platform:
        return error_response(RequestError(400, "pass ?platform= (e.g. macos-arm64, linux-x86_64)", param="platform"))
    release = await request.app.state.releases.latest(platform)
    if release is None:
        return error_response(
            RequestError(404, f"no release is registered for platform {platform!r}", code="release_not_found")
        )
    return JSONResponse(release.to_json())


_SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.\-:\[\]]+(/[A-Za-z0-9._~\-/]*)?$")


def installer_text() -> str | None:
    """``install.sh`` as shipped in the wheel, or from the source checkout; ``None`` if neither exists."""
    pkg = Path(darkbloom.__file__).parent
    for path in (pkg / "_data" / "install.sh", pkg.parent / "install.sh"):
        if path.is_file():
            return path.read_text()
    return None


async def install_script(request: Request) -> Response:
    """``GET /install.sh``: the installer, pointed at this coordinator so it installs its releases."""
    text = installer_text()
    if text is None:
        return PlainTextResponse("install.sh is not bundled with this coordinator\n", status_code=404)
    base = str(request.base_url).rstrip("/")
    # The Host header is the caller's to choose: only a plain URL may go into a shell script.
    if _SAFE_URL.match(base):
        text = text.replace('\nserved_by=""\n', f"\nserved_by='{base}'\n", 1)
    return PlainTextResponse(text, media_type="text/x-shellscript", headers={"Cache-Control": "no-cache"})
