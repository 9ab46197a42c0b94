"""Device-code login routes (RFC 8628) and the ``/link`` approval page."""

from __future__ import annotations

import html
import json
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response, read_body
from darkbloom.server.auth import device
from darkbloom.server.auth.keys import authenticate


async def _fields(request: Request) -> dict[str, str]:
    """A JSON object or an ``application/x-www-form-urlencoded`` body (the RFC's form) as strings."""
    raw = await read_body(request)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(raw.decode(errors="replace")).items()}
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    return {k: v for k, v in body.items() if isinstance(v, str)}


def _base_url(request: Request) -> str:
    configured = request.app.state.settings.public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


async def device_code(request: Request) -> Response:
    code = await device.start(request.app.state.store, time.time())
    uri = f"{_base_url(request)}/link"
    return JSONResponse(
        {
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?code={code.user_code}",
            "expires_in": code.expires_in,
            "interval": code.interval,
        }
    )


async def device_token(request: Request) -> Response:
    try:
        fields = await _fields(request)
    except RequestError as err:
        return JSONResponse({"error": "invalid_request", "error_description": err.message}, status_code=400)
    code = fields.get("device_code", "")
    if not code:
        return JSONResponse({"error": "invalid_request", "error_description": "missing device_code"}, status_code=400)
    try:
        token, account_id = await device.poll(request.app.state.store, code, time.time())
    except device.DeviceFlowError as exc:
        return JSONResponse(exc.body(), status_code=exc.status, headers={"Cache-Control": "no-store"})
    return JSONResponse(
        {"access_token": token, "token_type": "Bearer", "token": token, "account_id": account_id},
        headers={"Cache-Control": "no-store"},
    )


async def _decide(request: Request, approve: bool) -> Response:
    try:
        consumer = await require_consumer(request)
        user_code = (await _fields(request)).get("user_code", "")
        if not user_code:
            raise RequestError(400, "missing user_code", param="user_code")
        await device.decide(request.app.state.store, user_code, consumer.account_id, time.time(), approve)
    except RequestError as err:
        return error_response(err)
    except device.DeviceFlowError as exc:
        return error_response(RequestError(exc.status, exc.description, code=exc.error, param="user_code"))
    return JSONResponse({"status": "approved" if approve else "denied", "account_id": consumer.account_id})


async def approve(request: Request) -> Response:
    return await _decide(request, True)


async def deny(request: Request) -> Response:
    return await _decide(request, False)


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Link a Darkbloom node</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto}}
input{{font-size:1.1rem;width:100%;margin:.3rem 0 1rem}}</style>
</head><body><h1>Link a provider node</h1><p>{message}</p>
<form method="post" action="/link">
<label>Code shown by <code>darkbloom node login</code>
<input name="user_code" value="{code}" autocomplete="off" required></label>
<label>Your API key (the node's earnings go to its account)<input name="api_key" type="password" required></label>
<button type="submit">Approve</button></form></body></html>"""


async def link_page(request: Request) -> Response:
    if request.method == "GET":
        code = html.escape(request.query_params.get("code", "")[:32])
        return HTMLResponse(_PAGE.format(message="Enter the code your node shows.", code=code))
    try:
        fields = await _fields(request)
    except RequestError as err:
        return HTMLResponse(_PAGE.format(message=html.escape(err.message), code=""), status_code=400)
    code = fields.get("user_code", "")
    record = await authenticate(request.app.state.store, fields.get("api_key", "").strip())
    if record is None:
        return HTMLResponse(
            _PAGE.format(message="That API key is not valid.", code=html.escape(code[:32])), status_code=401
        )
    try:
        await device.decide(request.app.state.store, code, record.account_id, time.time())
    except device.DeviceFlowError as exc:
        return HTMLResponse(_PAGE.format(message=html.escape(exc.description), code=""), status_code=exc.status)
    return HTMLResponse(
        "<!doctype html><html><body><h1>Node linked</h1><p>The node will pick up its token "
        f"within seconds; its earnings go to {html.escape(record.account_id)}.</p></body></html>"
    )


ROUTES = [
    Route("/v1/device/code", device_code, methods=["POST"]),
    Route("/v1/device/token", device_token, methods=["POST"]),
    Route("/v1/device/approve", approve, methods=["POST"]),
    Route("/v1/device/deny", deny, methods=["POST"]),
    Route("/link", link_page, methods=["GET", "POST"]),
]
