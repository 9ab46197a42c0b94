"""``darkbloom admin``: operator commands on the coordinator's database."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from darkbloom.cli.common import DbOption, HomeOption, fail
from darkbloom.server.settings import darkbloom_home, default_db_url

app = typer.Typer(help="Operator commands: prices, credit, invites, the books.", no_args_is_help=True)
price_app = typer.Typer(help="Model prices (USD per million tokens; unpriced models are free).", no_args_is_help=True)
app.add_typer(price_app, name="price")


def _url(db: str | None, home: object) -> str:
    return db or default_db_url(darkbloom_home(home))  # type: ignore[arg-type]


def _run(coro):  # type: ignore[no-untyped-def]
    from darkbloom.server.billing.ledger import LedgerError
    from darkbloom.server.store import StoreError

    try:
        return asyncio.run(coro)
    except (StoreError, LedgerError) as exc:
        fail(str(exc))


@price_app.command("set")
def price_set(
    model: Annotated[str, typer.Argument(help="Model id as nodes advertise it.")],
    input_usd: Annotated[str, typer.Option("--input", help="USD per million input (prompt) tokens.")],
    output_usd: Annotated[str, typer.Option("--output", help="USD per million output (completion) tokens.")],
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Set a model's price; it applies to requests admitted from now on."""
    from darkbloom.server.billing.operations import set_price

    price = _run(set_price(_url(db, home), model, input_usd, output_usd))
    typer.echo(f"{model}: input {price.input_per_m} micro-USD/M tokens, output {price.output_per_m} micro-USD/M tokens")


@price_app.command("list")
def price_list(db: DbOption = None, home: HomeOption = None) -> None:
    """List priced models (any other model is free)."""
    from darkbloom.server.billing.operations import list_prices

    for model, p in (_run(list_prices(_url(db, home))) or {}).items():
        typer.echo(f"{model}  input {p.input_per_m / 1e6:.6f} USD/M  output {p.output_per_m / 1e6:.6f} USD/M")


@app.command()
def credit(
    account: Annotated[str, typer.Argument(help="Consumer account id (acct_...).")],
    usd: Annotated[str, typer.Argument(help="Amount in USD.")],
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Grant credit to a consumer account."""
    from darkbloom.server.billing.operations import grant_credit

    balance = _run(grant_credit(_url(db, home), account, usd))
    typer.echo(f"{account}: balance {balance} micro-USD")


@app.command("invite")
def invite(
    credit_usd: Annotated[str, typer.Option("--credit", help="USD each redemption grants.")],
    uses: Annotated[int, typer.Option("--uses", min=1, help="How many accounts may redeem it.")] = 1,
    db: DbOption = None,
    home: HomeOption = None,
) -> None:
    """Create an invite code (INV-XXXXXXXX); the code is the last line of stdout."""
    from darkbloom.server.billing.operations import create_invite

    code = _run(create_invite(_url(db, home), credit_usd, uses))
    typer.echo(code)


@app.command()
def audit(db: DbOption = None, home: HomeOption = None) -> None:
    """Check the books: balances equal their entries, nothing negative, every settlement adds up."""
    from darkbloom.server.billing.operations import audit as run_audit

    problems = _run(run_audit(_url(db, home))) or []
    for p in problems:
        typer.echo(p)
    if problems:
        raise typer.Exit(1)
    typer.echo("books balance")
