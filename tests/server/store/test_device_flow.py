"""RFC 8628 device-code login on both backends: pending, slow_down, approve, deny, expiry, one collection."""

from __future__ import annotations

import asyncio
import re

import pytest

from darkbloom.server.auth import device
from darkbloom.server.auth.device import DeviceFlowError
from darkbloom.server.auth.keys import create_api_key


async def _err(coro) -> DeviceFlowError:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceFlowError) as info:
        await coro
    return info.value


def test_device_flow_lifecycle(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            code = await device.start(store, now=1000.0)
            assert re.fullmatch(r"[0-9a-f]{64}", code.device_code)
            assert re.fullmatch(
                r"[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}-[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}", code.user_code
            )
            assert (code.expires_in, code.interval) == (900, 5)
            assert (await _err(device.poll(store, code.device_code, 1005.0))).error == "authorization_pending"
            slow = await _err(device.poll(store, code.device_code, 1006.0))
            assert (slow.error, slow.interval) == ("slow_down", 10), "polling early adds 5 s to the interval"
            assert (await _err(device.poll(store, code.device_code, 1011.0))).error == "slow_down"
            assert (await _err(device.poll(store, "f" * 64, 1030.0))).status == 404
            # People type codes loosely.
            await device.decide(store, code.user_code.lower().replace("-", ""), rec.account_id, 1030.0)
            assert (await _err(device.decide(store, code.user_code, rec.account_id, 1031.0))).status == 409
            token, account = await device.poll(store, code.device_code, 1040.0)
            assert token.startswith("dbp-") and account == rec.account_id
            again = await _err(device.poll(store, code.device_code, 1050.0))
            assert again.status == 404 and again.error == "invalid_grant", "the token is handed out once"
            assert await device.account_for_token(store, token) == rec.account_id
            async with store.transaction() as tx:
                rows = await tx.fetchall("SELECT token_hash FROM provider_tokens")
                leftovers = await tx.fetchall("SELECT token FROM device_codes WHERE token IS NOT NULL")
            assert rows == [(device.sha256(token),)] and leftovers == [], "only the token's hash stays at rest"
            assert await device.link_registered_node(store, "node-z", token, 1060.0) == rec.account_id
            assert await device.link_registered_node(store, "node-y", "dbp-wrong", 1060.0) is None
            # Someone else's token under an already-linked node id does not take its earnings.
            _, thief = await create_api_key(store)
            other = await device.start(store, now=1100.0)
            await device.decide(store, other.user_code, thief.account_id, 1101.0)
            thief_token, _ = await device.poll(store, other.device_code, 1102.0)
            assert await device.link_registered_node(store, "node-z", thief_token, 1103.0) == rec.account_id
        finally:
            await store.close()

    asyncio.run(scenario())


def test_denied_expired_and_unknown_codes(store_factory) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        store = store_factory()
        await store.migrate()
        try:
            _, rec = await create_api_key(store)
            denied = await device.start(store, now=0.0)
            await device.decide(store, denied.user_code, rec.account_id, 1.0, approve=False)
            assert (await _err(device.poll(store, denied.device_code, 10.0))).error == "access_denied"
            late = await device.start(store, now=0.0)
            gone = await _err(device.decide(store, late.user_code, rec.account_id, 900.0))
            assert (gone.status, gone.error) == (410, "expired_token")
            polled = await _err(device.poll(store, late.device_code, 901.0))
            assert (polled.status, polled.error) == (410, "expired_token")
            assert (await _err(device.decide(store, "ZZZZ-ZZZZ", rec.account_id, 1.0))).status == 404
        finally:
            await store.close()

    asyncio.run(scenario())
