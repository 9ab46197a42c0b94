"""``darkbloom serve``: the coordinator."""

from __future__ import annotations

from typing import Annotated

import typer

from darkbloom.cli.common import DbOption, HomeOption, fail, setup_logging
from darkbloom.server.settings import Settings, SettingsError, darkbloom_home


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8420,
    db: DbOption = None,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    challenge_interval: Annotated[
        float, typer.Option("--challenge-interval", envvar="DARKBLOOM_CHALLENGE_INTERVAL", help="Seconds between attestation challenges to each node.", min=1.0)
    ] = 300.0,
    require_attestation: Annotated[
        bool, typer.Option("--require-attestation", envvar="DARKBLOOM_REQUIRE_ATTESTATION", help="Refuse nodes that register without a signed attestation bundle.")
    ] = False,
) -> None:
    """Run the coordinator: OpenAI-compatible API for consumers, WebSocket for provider nodes."""
    from darkbloom.listen import ListenError
    from darkbloom.server.runner import serve as run
    from darkbloom.server.store import StoreError

    setup_logging(verbose)
    try:
        settings = Settings(
            home=darkbloom_home(home), db_url=db or "", host=host, port=port,
            challenge_interval_s=challenge_interval, require_attestation=require_attestation,
        )
        run(settings)
    except (ListenError, StoreError, SettingsError) as exc:
        fail(str(exc))
