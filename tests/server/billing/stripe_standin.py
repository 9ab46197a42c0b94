"""A local stand-in for Stripe's HTTP API (the few endpoints darkbloom uses), driven by the real SDK.

Stripe's servers cannot be reached from tests, so this speaks the same wire
protocol: form-encoded POSTs with Bearer auth and ``Idempotency-Key``, JSON
objects back, Stripe-shaped errors. Webhook payloads are signed the way
Stripe signs them (``t=...,v1=HMAC-SHA256(secret, "t.payload")``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from darkbloom.testing import free_port

API_KEY = "sk_test_standin"
WEBHOOK_SECRET = "whsec_test_standin"


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's ``a[b][0][c]=v`` form encoding back into nested dicts (list indices become "0", "1" keys)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class StripeStandIn:
    """The stand-in's state: what it was asked, and switches to make it refuse."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}  # by idempotency key
        self.accounts: dict[str, dict[str, Any]] = {}
        self.fail_transfers = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        routes = [
            Route("/v1/checkout/sessions", self.create_session, methods=["POST"]),
            Route("/v1/accounts", self.create_account, methods=["POST"]),
            Route("/v1/account_links", self.create_account_link, methods=["POST"]),
            Route("/v1/transfers", self.create_transfer, methods=["POST"]),
        ]
        self.server = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StripeStandIn:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def _form(self, request: Request) -> dict[str, Any] | JSONResponse:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Invalid API Key provided", "invalid_request_error")
        return unflatten(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    async def create_session(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        item = form["line_items"]["0"]
        amount = int(item["price_data"]["unit_amount"]) * int(item["quantity"])
        sid = f"cs_test_{uuid.uuid4().hex[:24]}"
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": form["mode"],
            "amount_total": amount,
            "currency": "usd",
            "payment_status": "unpaid",
            "status": "open",
            "client_reference_id": form.get("client_reference_id"),
            "metadata": form.get("metadata", {}),
            "url": f"https://checkout.stripe.test/c/pay/{sid}",
        }
        self.sessions[sid] = session
        return JSONResponse(session)

    async def create_account(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        acct = {
            "id": f"acct_{uuid.uuid4().hex[:16]}",
            "object": "account",
            "type": form.get("type"),
            "metadata": form.get("metadata", {}),
        }
        self.accounts[acct["id"]] = acct
        return JSONResponse(acct)

    async def create_account_link(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        if form.get("account") not in self.accounts:
            return _error(400, f"No such account: '{form.get('account')}'")
        return JSONResponse(
            {
                "object": "account_link",
                "url": f"https://connect.stripe.test/setup/{form['account']}",
                "expires_at": int(time.time()) + 300,
            }
        )

    async def create_transfer(self, request: Request) -> JSONResponse:
        form = await self._form(request)
        if isinstance(form, JSONResponse):
            return form
        key = request.headers.get("idempotency-key", uuid.uuid4().hex)
        if key in self.transfers:
            return JSONResponse(self.transfers[key])
        if self.fail_transfers:
            return _error(400, "Your Stripe balance is insufficient for this transfer.")
        if form.get("destination") not in self.accounts:
            return _error(400, f"No such destination: '{form.get('destination')}'")
        transfer = {
            "id": f"tr_{uuid.uuid4().hex[:20]}",
            "object": "transfer",
            "amount": int(form["amount"]),
            "currency": form["currency"],
            "destination": form["destination"],
            "metadata": form.get("metadata", {}),
        }
        self.transfers[key] = transfer
        return JSONResponse(transfer)

    def completed_event(self, session_id: str, event_id: str | None = None) -> bytes:
        """A ``checkout.session.completed`` event for a paid session, as Stripe would post it."""
        session = {**self.sessions[session_id], "payment_status": "paid", "status": "complete"}
        event = {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": "checkout.session.completed",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "data": {"object": session},
        }
        return json.dumps(event).encode()


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
