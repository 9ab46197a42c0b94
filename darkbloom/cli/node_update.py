"""``darkbloom node update``: check the coordinator for a newer node release and install it."""

from __future__ import annotations

from typing import Annotated

import typer

from darkbloom.cli.common import fail


def update(
    coordinator: Annotated[
        str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
    ] = "http://127.0.0.1:8420",
    check: Annotated[bool, typer.Option("--check", help="Only say whether a newer release exists.")] = False,
) -> None:
    """Install the coordinator's newest release for this platform, after verifying its SHA-256."""
    from darkbloom.node.update import UpdateError
    from darkbloom.node.update import update as run_update

    try:
        run_update(coordinator, check_only=check, say=lambda m: typer.echo(m, err=True))
    except UpdateError as exc:
        fail(str(exc))
