"""Options and helpers shared by the CLI commands (parsing only)."""

from __future__ import annotations

import logging
import os
import sys
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
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("DARKBLOOM_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
