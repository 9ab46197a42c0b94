"""Device-code login (RFC 8628) that links a provider node to an account.

The node asks for a code pair; the account holder approves the short user
code (``darkbloom device approve CODE`` or the ``/link`` page) with their API
key; the node, polling with the long device code, then receives a provider
token once. Only hashes of the device code and of the token are kept at rest;
the clear token waits in the row just until the node collects it.

Formats follow the original: device_code 64 hex, user_code ``XXXX-XXXX`` from
an alphabet without look-alikes, expires in 900 s, poll interval 5 s.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from darkbloom.server.store import Store, money

USER_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
EXPIRES_IN_S = 900
INTERVAL_S = 5
SLOW_DOWN_STEP_S = 5  # RFC 8628 3.5: each slow_down adds 5 s to the interval
TOKEN_PREFIX = "dbp-"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_user_code() -> str:
    chars = [secrets.choice(USER_CODE_ALPHABET) for _ in range(8)]
    return "".join(chars[:4]) + "-" + "".join(chars[4:])


def normalize_user_code(code: str) -> str:
    """Accept what people type: lower case, missing dash, spaces."""
    raw = "".join(ch for ch in code.upper() if ch.isalnum())
    return f"{raw[:4]}-{raw[4:]}" if len(raw) == 8 else code.strip().upper()


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


class DeviceFlowError(Exception):
    """An RFC 8628 error: ``error`` is the RFC's code, ``status`` the HTTP status we answer with."""

    def __init__(self, status: int, error: str, description: str, interval: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.interval = interval

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.error, "error_description": self.description}
        if self.interval is not None:
            body["interval"] = self.interval
        return body


async def start(store: Store, now: float) -> DeviceCode:
    """Create a pending device/user code pair."""
    device_code = secrets.token_hex(32)
    for _ in range(5):
        user_code = new_user_code()
        async with store.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM device_codes WHERE user_code = ?", user_code):
                continue
            await tx.execute(
                "INSERT INTO device_codes (device_code_hash, user_code, status, "
                "created_at, expires_at, interval_s) VALUES (?, ?, 'pending', ?, ?, ?)",
                sha256(device_code),
                user_code,
                now,
                now + EXPIRES_IN_S,
                INTERVAL_S,
            )
            return DeviceCode(device_code, user_code, EXPIRES_IN_S, INTERVAL_S)
    raise RuntimeError("could not find a free user code")


async def decide(store: Store, user_code: str, account_id: str, now: float, approve: bool = True) -> None:
    """Approve (or deny) a pending user code on behalf of ``account_id``.

    Raises:
        DeviceFlowError: 404 unknown code, 410 expired, 409 already approved, denied or used.
    """
    code = normalize_user_code(user_code)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT status, expires_at FROM device_codes WHERE user_code = ?" + tx.lock, code)
        if row is None:
            raise DeviceFlowError(404, "invalid_grant", f"no device login with code {code}")
        if row[0] != "pending":
            raise DeviceFlowError(409, "already_used", f"code {code} was already {row[0]}")
        if now >= float(row[1]):
            raise DeviceFlowError(410, "expired_token", f"code {code} has expired; run `darkbloom node login` again")
        if not approve:
            await tx.execute("UPDATE device_codes SET status = 'denied' WHERE user_code = ?", code)
            return
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        await tx.execute(
            "INSERT INTO provider_tokens (token_hash, account_id, created_at) VALUES (?, ?, ?)",
            sha256(token),
            account_id,
            now,
        )
        await tx.execute(
            "UPDATE device_codes SET status = 'approved', account_id = ?, token = ? WHERE user_code = ?",
            account_id,
            token,
            code,
        )


async def poll(store: Store, device_code: str, now: float) -> tuple[str, str]:
    """The node's poll: the provider token and account once approved (handed out exactly once).

    Raises:
        DeviceFlowError: ``authorization_pending``, ``slow_down`` (polled faster
            than the interval; the interval grows by 5 s), ``access_denied``,
            410 ``expired_token``, 404 ``invalid_grant`` (unknown or already collected).
    """
    h = sha256(device_code)
    async with store.transaction() as tx:
        row = await tx.fetchone(
            "SELECT status, account_id, token, expires_at, interval_s, "
            "last_poll_at FROM device_codes WHERE device_code_hash = ?" + tx.lock,
            h,
        )
        if row is None or row[0] == "collected":
            raise DeviceFlowError(404, "invalid_grant", "unknown device code (or its token was already collected)")
        status, account_id, token, expires_at, interval, last_poll = row
        if now >= float(expires_at) and status != "approved":
            raise DeviceFlowError(410, "expired_token", "the device code has expired; start the login again")
        if status == "denied":
            raise DeviceFlowError(403, "access_denied", "the account holder denied this login")
        if status == "approved":
            await tx.execute("UPDATE device_codes SET status = 'collected', token = NULL WHERE device_code_hash = ?", h)
            return str(token), str(account_id)
        if last_poll is not None and now - float(last_poll) < int(interval):
            interval = int(interval) + SLOW_DOWN_STEP_S
            await tx.execute(
                "UPDATE device_codes SET interval_s = ?, last_poll_at = ? WHERE device_code_hash = ?", interval, now, h
            )
            # Raising would roll back the new interval, so the error is returned after the commit.
            pending = DeviceFlowError(400, "slow_down", f"polling too fast; wait {interval} s between polls", interval)
        else:
            await tx.execute("UPDATE device_codes SET last_poll_at = ? WHERE device_code_hash = ?", now, h)
            pending = DeviceFlowError(
                400, "authorization_pending", "waiting for the account holder to approve the code"
            )
    raise pending


async def account_for_token(store: Store, token: str) -> str | None:
    """The account a provider token belongs to, or ``None``."""
    if not token:
        return None
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT account_id FROM provider_tokens WHERE token_hash = ?", sha256(token))
    return str(row[0]) if row else None


async def link_registered_node(store: Store, node_id: str, token: str, now: float) -> str | None:
    """Link a registering node to its token's account.

    Returns:
        The account the node earns for, or ``None`` for an unknown token. A
        node already linked to another account stays with it (first link wins).
    """
    account = await account_for_token(store, token)
    if account is None:
        return None
    return await money.link_node(store, node_id, account, now)
