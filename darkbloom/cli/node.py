"""``darkbloom node``: run a provider node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from darkbloom.cli import node_update
from darkbloom.cli.common import HomeOption, fail, setup_logging
from darkbloom.server.settings import darkbloom_home

app = typer.Typer(help="Run and manage a provider node.", invoke_without_command=True)
app.command("update")(node_update.update)


@app.callback()
def node(
    ctx: typer.Context,
    coordinator: Annotated[
        str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
    ] = "http://127.0.0.1:8420",
    model: Annotated[
        Optional[list[Path]], typer.Option("--model", "-m", help="Local MLX model directory to serve (repeatable).")
    ] = None,
    max_concurrency: Annotated[int, typer.Option(help="Most sequences decoding at once per model.")] = 8,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve local MLX models to a coordinator (runs in the foreground; Ctrl-C stops it)."""
    if ctx.invoked_subcommand is not None:
        return
    from darkbloom.node.runner import NodeConfig, NodeStartError, run_node

    setup_logging(verbose)
    if not model:
        fail("pass at least one --model PATH (a local MLX model directory)")
        return
    cfg = NodeConfig(coordinator=coordinator, model_paths=tuple(model), home=darkbloom_home(home), max_concurrency=max_concurrency)
    try:
        asyncio.run(run_node(cfg, say=lambda m: typer.echo(m, err=True)))
    except NodeStartError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command("login")
def login(
    coordinator: Annotated[
        str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
    ] = "http://127.0.0.1:8420",
    home: HomeOption = None,
) -> None:
    """Link this node to your account (device code); its provider token is saved 0600 under the home."""
    from darkbloom.client.device import DeviceLoginError, login as device_login

    try:
        account, path = device_login(coordinator, darkbloom_home(home), say=lambda m: typer.echo(m, err=True))
    except (DeviceLoginError, OSError) as exc:
        fail(str(exc))
        return
    typer.echo(f"linked to account {account}; provider token saved to {path}")
