"""Options and helpers shared by the CLI commands (parsing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

HomeOption = Annotated[
    Optional[Path],
    typer.Option("--home", help="Darkbloom home directory (default: $DARKBLOOM_HOME or ~/.darkbloom).", show_default=False),
]
DbOption = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        help="Database URL: sqlite:///absolute/path.db or postgresql://... (default: $DARKBLOOM_DATABASE_URL, else SQLite under the home).",
        show_default=False,
    ),
]


def setup_logging(verbose: bool = False) -> None:
    """Structured logs on stderr: JSON lines off a terminal, key=value on one (see darkbloom.logging_setup)."""
    from darkbloom.logging_setup import setup_logging as setup

    setup(verbose)


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
