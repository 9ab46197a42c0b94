"""``darkbloom tui``: the operator dashboard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from darkbloom.cli.common import HomeOption

UrlOption = Annotated[
    Optional[str],
    typer.Option(
        "--url",
        help="Coordinator URL (default: $DARKBLOOM_URL, else the config `darkbloom up` wrote).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    Optional[str],
    typer.Option(
        "--api-key", help="Consumer API key (default: $DARKBLOOM_API_KEY, else the config file).", show_default=False
    ),
]
LightOption = Annotated[
    bool, typer.Option("--light", help="Start with the light theme (the Theme key in the footer toggles it).")
]


def tui(
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    admin_key: Annotated[
        Optional[str],
        typer.Option(
            "--admin-key",
            help="Admin credential for the full fleet view "
            "(default: $DARKBLOOM_ADMIN_KEY, else <home>/admin_key for a local coordinator).",
            show_default=False,
        ),
    ] = None,
    light: LightOption = False,
    home: HomeOption = None,
) -> None:
    """Watch the fleet: nodes, routing per model, live requests, network stats.

    With a consumer key only, the public view.
    """
    from darkbloom.client.config import resolve_settings
    from darkbloom.server.settings import darkbloom_home
    from darkbloom.tui.launch import run_dashboard

    run_dashboard(resolve_settings(darkbloom_home(home), url, api_key, admin_key), light=light)
