"""Money routes: balance, usage, provider earnings, pricing, and the admin money endpoints."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response, read_body
from darkbloom.server.auth.admin import require_admin
from darkbloom.server.billing import ledger
from darkbloom.server.billing.audit import audit_books
from darkbloom.server.billing.pricing import Price
from darkbloom.server.store import money


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong."""
    raw = await read_body(request)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    return body


def micro_field(body: dict[str, Any], usd_key: str, *, required: bool = True) -> int:
    """An amount given in dollars (``usd_key``) or micro-dollars (``*_micro_usd``) as integer micro-USD."""
    micro_key = usd_key.replace("_usd", "_micro_usd")
    if micro_key in body:
        value = body[micro_key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RequestError(400, f"{micro_key} must be a non-negative integer", param=micro_key)
        return value
    if usd_key not in body:
        if required:
            raise RequestError(400, f"missing {usd_key}", param=usd_key)
        return 0
    value = body[usd_key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(400, f"{usd_key} must be a number of dollars", param=usd_key)
    try:
        return ledger.usd_to_micro(value)
    except ledger.LedgerError as exc:
        raise RequestError(400, str(exc), param=usd_key) from None


def _handled(fn):  # type: ignore[no-untyped-def]
    async def route(request: Request) -> Response:
        try:
            return await fn(request)
        except RequestError as err:
            return error_response(err)

    route.__name__ = fn.__name__
    return route


@_handled
async def balance(request: Request) -> Response:
    consumer = await require_consumer(request)
    micro = await money.balance(request.app.state.store, ledger.consumer(consumer.account_id))
    return JSONResponse({"account_id": consumer.account_id, "balance_micro_usd": micro, "balance_usd": micro / ledger.MICRO_PER_USD})


@_handled
async def usage(request: Request) -> Response:
    consumer = await require_consumer(request)
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise RequestError(400, "limit must be an integer from 1 to 1000", param="limit")
    rows = await money.usage_rows(request.app.state.store, consumer.account_id, int(limit))
    return JSONResponse({"object": "list", "data": rows})


@_handled
async def provider_earnings(request: Request) -> Response:
    consumer = await require_consumer(request)
    data = await money.provider_earnings(request.app.state.store, consumer.account_id)
    return JSONResponse({"account_id": consumer.account_id, **data})


async def pricing(request: Request) -> Response:
    settings = request.app.state.settings
    prices = await money.list_prices(request.app.state.store)
    rows = [{"model": m, "input_micro_usd_per_million": p.input_per_m, "output_micro_usd_per_million": p.output_per_m} for m, p in prices.items()]
    return JSONResponse({
        "object": "list",
        "data": rows,
        "unpriced_models": "free",
        "min_charge_micro_usd": settings.min_charge_micro_usd,
        "provider_share": settings.provider_share_bps / 10_000,
    })


@_handled
async def admin_set_price(request: Request) -> Response:
    require_admin(request)
    body = await json_object(request)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError(400, "missing model", param="model")
    price = Price(micro_field(body, "input_usd_per_million"), micro_field(body, "output_usd_per_million"))
    await money.set_price(request.app.state.store, model.strip(), price, time.time())
    return JSONResponse({"model": model.strip(), "input_micro_usd_per_million": price.input_per_m, "output_micro_usd_per_million": price.output_per_m})


@_handled
async def admin_credit(request: Request) -> Response:
    require_admin(request)
    body = await json_object(request)
    account_id = body.get("account_id")
    if not isinstance(account_id, str) or not account_id:
        raise RequestError(400, "missing account_id", param="account_id")
    amount = micro_field(body, "amount_usd")
    if amount <= 0:
        raise RequestError(400, "amount must be positive", param="amount_usd")
    store = request.app.state.store
    if not await money.account_exists(store, account_id):
        raise RequestError(404, f"no account {account_id}", code="account_not_found", param="account_id")
    await money.credit(store, account_id, amount, ledger.ADMIN_CREDIT, f"admin:{time.time():.6f}", time.time())
    return JSONResponse({"account_id": account_id, "balance_micro_usd": await money.balance(store, ledger.consumer(account_id))})


@_handled
async def admin_audit(request: Request) -> Response:
    require_admin(request)
    problems = await audit_books(request.app.state.store)
    return JSONResponse({"ok": not problems, "problems": problems}, status_code=200 if not problems else 500)
