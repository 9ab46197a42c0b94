"""``darkbloom chat -m MODEL "prompt"`` (or the prompt on stdin): print the streamed answer and exit.

For scripts and pipes: the answer goes to stdout as it arrives, nothing
else does; errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import sys
from typing import TextIO

from darkbloom.client.http import ClientError, DarkbloomClient, TextDelta


class OneShotError(Exception):
    """The question could not be answered (the message says why)."""


async def pick_model(client: DarkbloomClient, model: str | None) -> str:
    """``model`` if it is served, or the only model served; refuses to guess among several."""
    models = await client.models()
    if model:
        if model not in models:  # a typo: say what is served, not that no *attested* node serves it
            served = f"served: {', '.join(models)}" if models else "no model is being served right now"
            raise OneShotError(f"model {model!r} is not served on {client.url}; {served}")
        return model
    if len(models) == 1:
        return models[0]
    if not models:
        raise OneShotError("no model is being served right now")
    raise OneShotError(f"several models are served; choose one with -m: {', '.join(models)}")


async def ask(
    client: DarkbloomClient,
    prompt: str,
    *,
    model: str | None = None,
    system_prompt: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    out: TextIO | None = None,
) -> str:
    """Stream one answer to ``out`` (stdout) and return it.

    Raises:
        OneShotError: nothing to ask, no model, or the coordinator refused or failed.
    """
    out = out or sys.stdout
    if not prompt.strip():
        raise OneShotError("empty prompt: pass it as an argument or on stdin")
    try:
        chosen = await pick_model(client, model)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        parts: list[str] = []
        async for event in client.chat_stream(chosen, messages, max_tokens=max_tokens, temperature=temperature):
            if isinstance(event, TextDelta):
                parts.append(event.text)
                out.write(event.text)
                out.flush()
    except ClientError as exc:
        raise OneShotError(str(exc)) from None
    answer = "".join(parts)
    if not answer.endswith("\n"):
        out.write("\n")
        out.flush()
    return answer
