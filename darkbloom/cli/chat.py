"""``darkbloom chat``: the consumer chat client, interactive or one-shot."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from darkbloom.cli.common import HomeOption, fail
from darkbloom.cli.tui import ApiKeyOption, LightOption, UrlOption


def chat(
    prompt: Annotated[
        Optional[str],
        typer.Argument(
            help="Ask this, print the answer and exit (also read from stdin when piped).", show_default=False
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", help="Model id (default: the only one served, else a picker).", show_default=False
        ),
    ] = None,
    system: Annotated[str, typer.Option("--system", "-s", help="System prompt.")] = "",
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.", show_default=False)
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option("--temperature", min=0.0, help="Sampling temperature (0 = greedy).", show_default=False),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List saved conversations and exit.")] = False,
    resume: Annotated[
        Optional[int],
        typer.Option("--resume", help="Reopen a saved conversation by its number (see --list).", show_default=False),
    ] = None,
    seal: Annotated[
        bool,
        typer.Option(
            "--seal/--no-seal",
            help="Seal prompts and answers end to end to attested nodes, so the coordinator relays ciphertext "
            "(--no-seal lets the coordinator see them).",
        ),
    ] = True,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    light: LightOption = False,
    home: HomeOption = None,
) -> None:
    """Chat with a model. With a prompt argument or piped stdin, print the streamed answer and exit."""
    from darkbloom.client.config import resolve_settings
    from darkbloom.server.settings import darkbloom_home
    from darkbloom.tui import launch
    from darkbloom.tui.chat.oneshot import OneShotError

    settings = resolve_settings(darkbloom_home(home), url, api_key, use_admin=False)
    if list_:
        launch.print_conversations(settings)
        return
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()  # `echo prompt |` adds a newline nobody meant to ask about
    if prompt is not None:
        try:
            launch.run_oneshot(
                settings,
                prompt,
                model=model,
                system_prompt=system,
                max_tokens=max_tokens,
                temperature=temperature,
                sealed=seal,
            )
        except OneShotError as exc:
            fail(str(exc))
        return
    launch.run_chat(
        settings,
        model=model,
        system_prompt=system,
        resume=resume,
        max_tokens=max_tokens,
        temperature=temperature,
        light=light,
        sealed=seal,
    )
