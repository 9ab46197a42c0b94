"""``darkbloom keys``: consumer API keys."""

from __future__ import annotations

import asyncio

import typer

from darkbloom.cli.common import DbOption, HomeOption, fail
from darkbloom.server.settings import darkbloom_home, default_db_url

app = typer.Typer(help="Manage consumer API keys.", no_args_is_help=True)


@app.command()
def create(db: DbOption = None, home: HomeOption = None) -> None:
    """Create a consumer account and API key; the key is the last line of stdout (shown once)."""
    from darkbloom.server.auth.keys import create_key_in
    from darkbloom.server.store import StoreError

    url = db or default_db_url(darkbloom_home(home))
    try:
        key, record = asyncio.run(create_key_in(url))
    except StoreError as exc:
        fail(str(exc))
        return
    typer.echo(f"account {record.account_id}, key id {record.key_id} (prefix {record.prefix}); store the key now, it is not shown again:", err=True)
    typer.echo(key)
