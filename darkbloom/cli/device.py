"""``darkbloom device``: approve a node's device-code login for your account."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from darkbloom.cli.common import fail

app = typer.Typer(
    help="Approve or deny a provider node's login (darkbloom node login shows the code).", no_args_is_help=True
)

CoordinatorOption = Annotated[
    str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
]
KeyOption = Annotated[
    str,
    typer.Option(
        "--key", envvar="DARKBLOOM_API_KEY", help="Your API key; the node earns for its account.", show_default=False
    ),
]


def _decide(code: str, coordinator: str, key: str, deny: bool) -> None:
    from darkbloom.client.device import DeviceLoginError, approve

    if not key:
        fail("pass --key or set DARKBLOOM_API_KEY (the API key of the account the node should earn for)")
    try:
        account = approve(coordinator, key, code, deny=deny)
    except (DeviceLoginError, OSError) as exc:
        fail(str(exc))
        return
    typer.echo(f"{'denied' if deny else 'approved'} {code.upper()} for account {account}")


@app.command("approve")
def approve_cmd(
    code: Annotated[str, typer.Argument(help="The XXXX-XXXX code the node shows.")],
    coordinator: CoordinatorOption = "http://127.0.0.1:8420",
    key: KeyOption = os.environ.get("DARKBLOOM_API_KEY", ""),
) -> None:
    """Link the node showing CODE to your account."""
    _decide(code, coordinator, key, False)


@app.command("deny")
def deny_cmd(
    code: Annotated[str, typer.Argument(help="The XXXX-XXXX code the node shows.")],
    coordinator: CoordinatorOption = "http://127.0.0.1:8420",
    key: KeyOption = os.environ.get("DARKBLOOM_API_KEY", ""),
) -> None:
    """Refuse a login you did not start."""
    _decide(code, coordinator, key, True)
