"""``darkbloom up``: coordinator + local node + demo model, for a newcomer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from darkbloom import aio
from darkbloom.cli.common import HomeOption, fail, setup_logging


def up(
    model: Annotated[
        Optional[list[Path]], typer.Option("--model", "-m", help="Local MLX model directory (default: the demo model).")
    ] = None,
    port: Annotated[int, typer.Option(help="Coordinator port.", min=1, max=65535)] = 8420,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Start everything locally: a coordinator on SQLite, one node, a demo model, and a consumer key."""
    from darkbloom.listen import ListenError
    from darkbloom.local import run_local
    from darkbloom.node.runner import NodeStartError
    from darkbloom.server.settings import SettingsError, darkbloom_home

    setup_logging(verbose)
    try:
        aio.run(run_local(darkbloom_home(home), port=port, models=tuple(model or ()), say=lambda m: typer.echo(m, err=True)))
    except (ListenError, NodeStartError, SettingsError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
