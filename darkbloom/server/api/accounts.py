"""Account routes: invite redemption, referral codes, admin-made invites."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.billing import _handled, json_object, micro_field, posted
from darkbloom.server.auth.admin import require_admin
from darkbloom.server.billing import invites, ledger
from darkbloom.server.store import money


def _code(body: dict) -> str:  # type: ignore[type-arg]
    code = body.get("code")
    if not isinstance(code, str) or not code.strip():
        raise RequestError(400, "missing code", param="code")
    return code


def _refused(exc: invites.CodeError) -> RequestError:
    return RequestError(exc.status, str(exc), code=exc.code, param="code")


@_handled
async def redeem_invite(request: Request) -> Response:
    consumer = await require_consumer(request)
    code = _code(await json_object(request))
    store = request.app.state.store
    try:
        credit = await invites.redeem_invite(store, consumer.account_id, code, time.time())
    except invites.CodeError as exc:
        raise _refused(exc) from None
    posted(request, "credit")
    return JSONResponse(
        {
            "credited_micro_usd": credit,
            "balance_micro_usd": await money.balance(store, ledger.consumer(consumer.account_id)),
        }
    )


@_handled
async def my_referral_code(request: Request) -> Response:
    consumer = await require_consumer(request)
    code = await invites.referral_code(request.app.state.store, consumer.account_id, time.time())
    return JSONResponse({"code": code, "share_of_fee": request.app.state.settings.referral_share_bps / 10_000})


@_handled
async def apply_referral(request: Request) -> Response:
    consumer = await require_consumer(request)
    code = _code(await json_object(request))
    try:
        await invites.apply_referral(request.app.state.store, consumer.account_id, code, time.time())
    except invites.CodeError as exc:
        raise _refused(exc) from None
    return JSONResponse({"referred": True})


@_handled
async def admin_create_invite(request: Request) -> Response:
    require_admin(request)
    body = await json_object(request)
    credit = micro_field(body, "credit_usd")
    uses = body.get("max_uses", 1)
    if not isinstance(uses, int) or isinstance(uses, bool) or uses < 1:
        raise RequestError(400, "max_uses must be a positive integer", param="max_uses")
    if credit <= 0:
        raise RequestError(400, "credit must be positive", param="credit_usd")
    code = await invites.create_invite(request.app.state.store, credit, uses, time.time())
    return JSONResponse({"code": code, "credit_micro_usd": credit, "max_uses": uses})


ROUTES = [
    Route("/v1/admin/invites", admin_create_invite, methods=["POST"]),
    Route("/v1/invites/redeem", redeem_invite, methods=["POST"]),
    Route("/v1/referral", my_referral_code, methods=["GET"]),
    Route("/v1/referral/apply", apply_referral, methods=["POST"]),
]
