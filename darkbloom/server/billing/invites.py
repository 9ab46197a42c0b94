"""Invite codes (admin-made credit, one redemption per account) and referral codes.

Invite codes are ``INV-`` + 8 hex digits; each grants its credit to an
account once, and an account redeems at most one invite. A referral code
(``REF-`` + 8 hex) belongs to an account; a referee who applies it makes that
account earn a share of the platform fee on the referee's spend (see
``ledger.split_cost``).
"""

from __future__ import annotations

import secrets

from darkbloom.server.billing import ledger
from darkbloom.server.billing.ledger import Leg
from darkbloom.server.store import Store, money


class CodeError(ValueError):
    """A code that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def new_invite_code() -> str:
    return "INV-" + secrets.token_hex(4).upper()


def new_referral_code() -> str:
    return "REF-" + secrets.token_hex(4).upper()


def normalize(code: str) -> str:
    return code.strip().upper()


async def create_invite(store: Store, credit_micro_usd: int, max_uses: int, now: float) -> str:
    """Make an invite code worth ``credit_micro_usd`` to each of up to ``max_uses`` accounts."""
    if credit_micro_usd <= 0 or max_uses <= 0:
        raise ledger.LedgerError("an invite needs positive credit and at least one use")
    code = new_invite_code()
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO invites (code, credit_micro_usd, max_uses, uses, created_at) VALUES (?, ?, ?, 0, ?)",
            code,
            credit_micro_usd,
            max_uses,
            now,
        )
    return code


async def redeem_invite(store: Store, account_id: str, code: str, now: float) -> int:
    """Credit the invite's value to ``account_id``; return the amount.

    Raises:
        CodeError: 404 unknown code, 410 no uses left, 409 this account already redeemed an invite.
    """
    code = normalize(code)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT credit_micro_usd, max_uses, uses FROM invites WHERE code = ?" + tx.lock, code)
        if row is None:
            raise CodeError(404, f"no invite code {code}", "invalid_invite")
        if await tx.fetchone("SELECT code FROM invite_redemptions WHERE account_id = ?", account_id):
            raise CodeError(409, "this account has already redeemed an invite code", "invite_already_redeemed")
        credit, max_uses, uses = int(row[0]), int(row[1]), int(row[2])
        if uses >= max_uses:
            raise CodeError(410, f"invite code {code} has been used up", "invite_exhausted")
        await tx.execute("UPDATE invites SET uses = uses + 1 WHERE code = ?", code)
        await tx.execute(
            "INSERT INTO invite_redemptions (account_id, code, redeemed_at) VALUES (?, ?, ?)", account_id, code, now
        )
        legs = [
            Leg(ledger.EXTERNAL_GRANTS, -credit, ledger.INVITE_CREDIT),
            Leg(ledger.consumer(account_id), credit, ledger.INVITE_CREDIT),
        ]
        await money.post(tx, legs, f"invite:{code}", now)
    return credit


async def referral_code(store: Store, account_id: str, now: float) -> str:
    """The account's referral code, made on first ask."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT code FROM referral_codes WHERE account_id = ?", account_id)
        if row:
            return str(row[0])
        code = new_referral_code()
        await tx.execute(
            "INSERT INTO referral_codes (code, account_id, created_at) VALUES (?, ?, ?)", code, account_id, now
        )
        return code


async def apply_referral(store: Store, account_id: str, code: str, now: float) -> str:
    """Record that ``account_id`` was referred by the code's owner; return the referrer's account.

    Raises:
        CodeError: 404 unknown code, 400 one's own code, 409 already referred.
    """
    code = normalize(code)
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT account_id FROM referral_codes WHERE code = ?", code)
        if row is None:
            raise CodeError(404, f"no referral code {code}", "invalid_referral")
        referrer = str(row[0])
        if referrer == account_id:
            raise CodeError(400, "an account cannot refer itself", "self_referral")
        if await tx.fetchone("SELECT referrer_id FROM referrals WHERE account_id = ?", account_id):
            raise CodeError(409, "this account already has a referrer", "already_referred")
        await tx.execute(
            "INSERT INTO referrals (account_id, referrer_id, created_at) VALUES (?, ?, ?)", account_id, referrer, now
        )
    return referrer
