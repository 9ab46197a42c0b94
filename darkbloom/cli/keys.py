"""``darkbloom keys``: consumer API keys."""

from __future__ import annotations

import asyncio
import datetime
from typing import Annotated, Optional

import typer

from darkbloom.cli.common import DbOption, HomeOption, fail
from darkbloom.server.settings import darkbloom_home, default_db_url

app = typer.Typer(help="Manage consumer API keys.", no_args_is_help=True)


def _stamp(t: float | None) -> str:
    return (
        "never"
        if t is None
        else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    )


@app.command()
def create(
    credit: Annotated[Optional[str], typer.Option("--credit", help="Fund the new account with this many USD.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Add the key to this existing account.")] = None,
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Create a consumer account and API key; the key is the last line of stdout (shown once)."""
    from darkbloom.server.auth.keys import create_key_in
    from darkbloom.server.billing.ledger import LedgerError, usd_to_micro
    from darkbloom.server.store import StoreError

    url = db or default_db_url(darkbloom_home(home))
    try:
        micro = usd_to_micro(credit) if credit is not None else 0
        key, record = asyncio.run(create_key_in(url, micro, account))
    except (StoreError, LedgerError) as exc:
        fail(str(exc))
        return
    funded = f", credited {micro} micro-USD" if micro else ""
    typer.echo(
        f"account {record.account_id}{funded}, key id {record.key_id} "
        f"(prefix {record.prefix}); store the key now, it is not shown again:",
        err=True,
    )
    typer.echo(key)


@app.command("list")
def list_keys(
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account's keys.")] = None,
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """List keys: id, visible prefix, account, state, last use (never the key itself)."""
    from darkbloom.server.auth.keys import list_keys_in
    from darkbloom.server.store import StoreError

    try:
        records = asyncio.run(list_keys_in(db or default_db_url(darkbloom_home(home)), account))
    except StoreError as exc:
        fail(str(exc))
        return
    for r in records:
        state = "revoked" if r.revoked else "live"
        typer.echo(
            f"{r.key_id}  {r.prefix}...  {r.account_id}  {state}  created "
            f"{_stamp(r.created_at)}  last used {_stamp(r.last_used_at)}"
        )


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...) or its visible prefix.")],
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Revoke a key: it is refused from the next request on."""
    from darkbloom.server.auth.keys import revoke_key_in
    from darkbloom.server.store import StoreError

    try:
        done = asyncio.run(revoke_key_in(db or default_db_url(darkbloom_home(home)), key_id))
    except StoreError as exc:
        fail(str(exc))
        return
    if not done:
        fail(f"no live key {key_id}")
    typer.echo(f"revoked {key_id}")
