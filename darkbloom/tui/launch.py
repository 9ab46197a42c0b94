"""Entry points the CLI calls: start the dashboard, the chat app, or a one-shot question."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from darkbloom.client.config import ClientSettings
from darkbloom.client.history import ChatHistory, history_path
from darkbloom.client.http import DarkbloomClient


def run_dashboard(settings: ClientSettings, *, light: bool = False) -> None:
    """Run ``darkbloom tui`` in the foreground until the user quits."""
    from darkbloom.tui.dashboard.app import DashboardApp

    client = DarkbloomClient(settings.url, api_key=settings.api_key, admin_key=settings.admin_key)
    DashboardApp(client, theme="textual-light" if light else "textual-dark").run()  # the app closes the client


def run_chat(
    settings: ClientSettings,
    *,
    model: str | None,
    system_prompt: str,
    resume: int | None,
    max_tokens: int | None,
    temperature: float | None,
    light: bool = False,
    sealed: bool = True,
) -> None:
    """Run the interactive chat app; conversations are saved under the home."""
    from darkbloom.tui.chat.app import ChatApp

    history = ChatHistory(history_path(settings.home))
    client = DarkbloomClient(settings.url, api_key=settings.api_key, sealed=sealed)
    app = ChatApp(
        client,
        history=history,
        model=model,
        system_prompt=system_prompt,
        conversation_id=resume,
        max_tokens=max_tokens,
        temperature=temperature,
        theme="textual-light" if light else "textual-dark",
    )
    try:
        app.run()
    finally:
        history.close()


def print_conversations(settings: ClientSettings, out: TextIO | None = None) -> int:
    """``darkbloom chat --list``: saved conversations, newest first. Returns how many."""
    out = out or sys.stdout
    history = ChatHistory(history_path(settings.home))
    try:
        rows = history.list_conversations()
    finally:
        history.close()
    if not rows:
        out.write(f"no saved conversations in {history_path(settings.home)}\n")
        return 0
    for c in rows:
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated))
        out.write(f"{c.id:>4}  {updated}  {c.model}  {c.messages} turns  {c.title}\n")
    out.write("open one with: darkbloom chat --resume ID\n")
    return len(rows)


def run_oneshot(
    settings: ClientSettings,
    prompt: str,
    *,
    model: str | None,
    system_prompt: str,
    max_tokens: int | None,
    temperature: float | None,
    sealed: bool = True,
) -> None:
    """Answer one prompt on stdout.

    Raises:
        OneShotError: the answer could not be produced (the message says why).
    """
    from darkbloom.tui.chat.oneshot import ask

    async def go() -> None:
        async with DarkbloomClient(settings.url, api_key=settings.api_key, sealed=sealed) as client:
            await ask(
                client, prompt, model=model, system_prompt=system_prompt, max_tokens=max_tokens, temperature=temperature
            )

    asyncio.run(go())
