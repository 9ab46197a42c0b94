"""Money routes: balance, usage, provider earnings, pricing, and the admin money endpoints."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response, read_body
from darkbloom.server.auth.admin import require_admin
from darkbloom.server.billing import ledger, stripe_pay
from darkbloom.server.billing.audit import audit_books
from darkbloom.server.billing.pricing import Price
from darkbloom.server.billing.ratelimit import RateLimiter, RateLimits, rate_limited
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
    return JSONResponse(
        {"account_id": consumer.account_id, "balance_micro_usd": micro, "balance_usd": micro / ledger.MICRO_PER_USD}
    )


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
    rows = [
        {"model": m, "input_micro_usd_per_million": p.input_per_m, "output_micro_usd_per_million": p.output_per_m}
        for m, p in prices.items()
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": rows,
            "unpriced_models": "free",
            "min_charge_micro_usd": settings.min_charge_micro_usd,
            "provider_share": settings.provider_share_bps / 10_000,
        }
    )


@_handled
async def admin_set_price(request: Request) -> Response:
    require_admin(request)
    body = await json_object(request)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError(400, "missing model", param="model")
    price = Price(micro_field(body, "input_usd_per_million"), micro_field(body, "output_usd_per_million"))
    await money.set_price(request.app.state.store, model.strip(), price, time.time())
    return JSONResponse(
        {
            "model": model.strip(),
            "input_micro_usd_per_million": price.input_per_m,
            "output_micro_usd_per_million": price.output_per_m,
        }
    )


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
    posted(request, "credit")
    return JSONResponse(
        {"account_id": account_id, "balance_micro_usd": await money.balance(store, ledger.consumer(account_id))}
    )


@_handled
async def admin_audit(request: Request) -> Response:
    require_admin(request)
    problems = await audit_books(request.app.state.store)
    return JSONResponse({"ok": not problems, "problems": problems}, status_code=200 if not problems else 500)


# ---- Stripe: deposits, webhook, Connect payouts ----------------------------------------


def _money_rate_limit(request: Request, account_id: str) -> None:
    """Money endpoints are rate limited harder than inference (default 0.2/s, burst 3), per account."""
    limiter: RateLimiter | None = getattr(request.app.state, "money_limiter", None)
    if limiter is None:
        settings = request.app.state.settings
        limits = RateLimits(settings.money_rate_limit_rps, settings.money_rate_limit_burst, 0, 0)
        limiter = request.app.state.money_limiter = RateLimiter(limits)
    wait = limiter.check(account_id, time.monotonic())
    if wait > 0:
        raise rate_limited("too many payment requests; retry later", wait)


def posted(request: Request, kind: str) -> None:
    """Count a ledger posting on the metrics counter, when the app has one."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.ledger_posted(kind)


def _payment_error(exc: stripe_pay.PaymentError) -> RequestError:
    return RequestError(
        exc.status, str(exc), type="invalid_request_error" if exc.status < 500 else "server_error", code=exc.code
    )


def _base(request: Request) -> str:
    return request.app.state.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")


@_handled
async def create_deposit(request: Request) -> Response:
    consumer = await require_consumer(request)
    amount = micro_field(await json_object(request), "amount_usd")
    _money_rate_limit(request, consumer.account_id)
    try:
        session = await stripe_pay.create_deposit(
            request.app.state.store, request.app.state.settings, consumer.account_id, amount, _base(request)
        )
    except stripe_pay.PaymentError as exc:
        raise _payment_error(exc) from None
    return JSONResponse(session)


async def stripe_webhook(request: Request) -> Response:
    try:
        payload = await read_body(request)
        outcome = await stripe_pay.handle_webhook(
            request.app.state.store, request.app.state.settings, payload, request.headers.get("stripe-signature")
        )
    except RequestError as err:
        return error_response(err)
    except stripe_pay.PaymentError as exc:
        return error_response(_payment_error(exc))
    if outcome == "credited":
        posted(request, "deposit")
    return JSONResponse({"received": True, "outcome": outcome})


@_handled
async def provider_connect(request: Request) -> Response:
    consumer = await require_consumer(request)
    _money_rate_limit(request, consumer.account_id)
    try:
        return JSONResponse(
            await stripe_pay.connect_account(
                request.app.state.store, request.app.state.settings, consumer.account_id, _base(request)
            )
        )
    except stripe_pay.PaymentError as exc:
        raise _payment_error(exc) from None


@_handled
async def provider_payout(request: Request) -> Response:
    consumer = await require_consumer(request)
    body = await json_object(request)
    amount = (
        micro_field(body, "amount_usd", required=False)
        if ("amount_usd" in body or "amount_micro_usd" in body)
        else None
    )
    _money_rate_limit(request, consumer.account_id)
    try:
        done = await stripe_pay.payout(request.app.state.store, request.app.state.settings, consumer.account_id, amount)
    except stripe_pay.PaymentError as exc:
        raise _payment_error(exc) from None
    posted(request, "payout")
    return JSONResponse(
        {
            "payout_id": done.payout_id,
            "amount_micro_usd": done.amount_micro_usd,
            "transfer_id": done.transfer_id,
            "status": "paid",
        }
    )


@_handled
async def provider_payouts(request: Request) -> Response:
    consumer = await require_consumer(request)
    return JSONResponse(
        {"object": "list", "data": await stripe_pay.list_payouts(request.app.state.store, consumer.account_id)}
    )


ROUTES = [
    Route("/v1/balance", balance, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/pricing", pricing, methods=["GET"]),
    Route("/v1/provider/earnings", provider_earnings, methods=["GET"]),
    Route("/v1/billing/deposits", create_deposit, methods=["POST"]),
    Route("/v1/billing/stripe/webhook", stripe_webhook, methods=["POST"]),
    Route("/v1/provider/connect", provider_connect, methods=["POST"]),
    Route("/v1/provider/payouts", provider_payout, methods=["POST"]),
    Route("/v1/provider/payouts", provider_payouts, methods=["GET"]),
    Route("/v1/admin/prices", admin_set_price, methods=["POST"]),
    Route("/v1/admin/credit", admin_credit, methods=["POST"]),
    Route("/v1/admin/audit", admin_audit, methods=["GET"]),
]
