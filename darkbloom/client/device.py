"""The client side of device-code login: a node asking for a provider token, an account holder approving.

Kept out of ``node/`` and ``server/`` so the CLI can use it without either
importing the other. The provider token lands 0600 in
``<home>/node/provider_token``; the node sends it when it registers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx


class DeviceLoginError(RuntimeError):
    """The login did not complete (denied, expired, or the coordinator said no)."""


def provider_token_path(home: Path) -> Path:
    return home / "node" / "provider_token"


def read_provider_token(home: Path) -> str | None:
    """The provider token saved by ``darkbloom node login``, if any."""
    try:
        return provider_token_path(home).read_text().strip() or None
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _error(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "http_error", resp.text[:200]
    err = body.get("error")
    if isinstance(err, dict):  # OpenAI-shaped
        return str(err.get("code") or err.get("type")), str(err.get("message"))
    return str(err), str(body.get("error_description", ""))


def login(
    coordinator: str,
    home: Path,
    say: Callable[[str], None] = print,
    *,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> tuple[str, str]:
    """Run the device flow (RFC 8628) against ``coordinator`` and save the provider token.

    Shows the user code and where to approve it, polls at the interval the
    coordinator sets (slowing down when told), and writes the token 0600.

    Returns:
        The account id the node is now linked to, and the token file's path.

    Raises:
        DeviceLoginError: denied, expired, or refused.
    """
    base = coordinator.rstrip("/")
    http = client or httpx.Client(timeout=30)
    try:
        r = http.post(f"{base}/v1/device/code")
        if r.status_code != 200:
            raise DeviceLoginError(f"coordinator refused a device code: {r.status_code} {_error(r)[1]}")
        start = r.json()
        say(
            f"To link this node, approve code {start['user_code']}:\n"
            f"  darkbloom device approve {start['user_code']} --coordinator {base}\n"
            f"  or open {start['verification_uri_complete']}"
        )
        interval = float(start["interval"])
        deadline = time.monotonic() + float(start["expires_in"])
        while time.monotonic() < deadline:
            sleep(interval)
            r = http.post(
                f"{base}/v1/device/token",
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                    "device_code": start["device_code"],
                },
            )
            if r.status_code == 200:
                body = r.json()
                path = provider_token_path(home)
                _write_private(path, body["access_token"] + "\n")
                return str(body["account_id"]), str(path)
            code, message = _error(r)
            if code == "authorization_pending":
                continue
            if code == "slow_down":
                interval = float(r.json().get("interval", interval + 5))
                continue
            raise DeviceLoginError(f"login failed: {code}: {message}")
        raise DeviceLoginError("the code expired before it was approved; run `darkbloom node login` again")
    finally:
        if client is None:
            http.close()


def approve(
    coordinator: str, api_key: str, user_code: str, *, deny: bool = False, client: httpx.Client | None = None
) -> str:
    """Approve (or deny) a node's user code with the account's API key; return the account id.

    Raises:
        DeviceLoginError: the coordinator refused (unknown, expired or used code; bad key).
    """
    http = client or httpx.Client(timeout=30)
    try:
        r = http.post(
            f"{coordinator.rstrip('/')}/v1/device/{'deny' if deny else 'approve'}",
            json={"user_code": user_code},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    finally:
        if client is None:
            http.close()
    if r.status_code != 200:
        code, message = _error(r)
        raise DeviceLoginError(f"{r.status_code} {code}: {message}")
    return str(r.json()["account_id"])
