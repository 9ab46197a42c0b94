"""``darkbloom proxy``: a local OpenAI-compatible endpoint that seals every request."""

from __future__ import annotations

from typing import Annotated

import typer

from darkbloom.cli.common import HomeOption, fail, setup_logging
from darkbloom.server.settings import darkbloom_home


def proxy(
    port: Annotated[int, typer.Option(help="Local port (the proxy listens on 127.0.0.1 only).", min=1, max=65535)] = 8421,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            "-c",
            envvar="DARKBLOOM_COORDINATOR",
            help="Coordinator base URL (default: the one `darkbloom up` saved).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="DARKBLOOM_API_KEY",
            help="Consumer API key (default: the one `darkbloom up` saved).",
            show_default=False,
        ),
    ] = None,
    k: Annotated[
        int,
        typer.Option(
            "--recipients", "-k", min=1, max=16, help="Nodes each request is sealed to (failover candidates)."
        ),
    ] = 3,
    home: HomeOption = None,
) -> None:
    """Serve http://127.0.0.1:PORT/v1 for any OpenAI client; every request is sealed before it leaves this machine."""
    from darkbloom.client.proxy import run_proxy
    from darkbloom.listen import ListenError
    from darkbloom.local import read_client_config

    setup_logging()
    saved = read_client_config(darkbloom_home(home))
    url = coordinator or saved.get("url", "")
    key = api_key or saved.get("api_key", "")
    if not url or not key:
        fail("pass --coordinator URL and --api-key KEY (or set DARKBLOOM_COORDINATOR / DARKBLOOM_API_KEY)")
        return
    try:
        run_proxy(url, key, port=port, k=k, say=lambda m: typer.echo(m, err=True))
    except ListenError as exc:
        fail(str(exc))
