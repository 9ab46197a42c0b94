"""``darkbloom serve``: the coordinator."""

from __future__ import annotations

from typing import Annotated

import typer

from darkbloom.cli.common import DbOption, HomeOption, setup_logging
from darkbloom.server.settings import Settings, darkbloom_home


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8420,
    db: DbOption = None,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the coordinator: OpenAI-compatible API for consumers, WebSocket for provider nodes."""
    from darkbloom.server.runner import serve as run

    setup_logging(verbose)
    run(Settings(home=darkbloom_home(home), db_url=db or "", host=host, port=port))
