"""OpenAI legacy text completions (``POST /v1/completions``): request and response shapes.

The prompt is sent to the node verbatim (``SamplingParams.raw_prompt``), with
no chat template, which is what callers of this API expect.
"""

from __future__ import annotations

from typing import Any

import msgspec

from darkbloom.protocol.frames import SamplingParams, TokenLogprob, TopLogprob
from darkbloom.protocol.openai import (
    RequestError,
    StreamOptions,
    check_sampling,
    check_stream_options,
    decode_body,
    node_seed,
    require_single_choice,
)

DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for ``/v1/completions``."""


class CompletionRequest(msgspec.Struct, frozen=True):
    """``POST /v1/completions`` body (legacy). Unknown fields are ignored, as OpenAI does."""

    model: str
    prompt: str | list[Any]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None


_completion_decoder = msgspec.json.Decoder(CompletionRequest)


def parse_completion_request(body: bytes) -> tuple[CompletionRequest, str]:
    """Decode and validate a legacy completion body.

    Returns:
        The request and its one prompt string.

    Raises:
        RequestError: 400 for invalid JSON or fields, more than one prompt,
            token-id prompts, ``n``/``best_of`` > 1, ``logprobs`` out of 0-5 or
            with ``echo`` (the prompt's own would be needed), or ``suffix``.
    """
    req: CompletionRequest = decode_body(_completion_decoder, body)
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise RequestError(
                400,
                "prompt must be a string or a list of one string (token-id and batched prompts are unsupported)",
                param="prompt",
            )
        prompt = prompt[0]
    if not prompt:
        raise RequestError(400, "prompt must be a non-empty string", param="prompt")
    require_single_choice(req.n)
    check_stream_options(req.stream, req.stream_options)
    if req.best_of is not None and req.best_of != 1:
        raise RequestError(400, f"best_of={req.best_of} is not supported: only 1", param="best_of")
    if req.logprobs is not None:
        if not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise RequestError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}", param="logprobs")
        if req.echo:
            raise RequestError(
                400, "logprobs with echo would need the prompt's log probabilities, which nodes do not report",
                param="logprobs",
            )
    if req.suffix:
        raise RequestError(400, "suffix (insertion) is not supported by this network", param="suffix")
    check_sampling(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
    )
    return req, prompt


def completion_params(req: CompletionRequest, prompt: str) -> SamplingParams:
    """The node's sampling for a legacy completion: the prompt goes verbatim, no chat template."""
    return SamplingParams(
        max_tokens=req.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=node_seed(req.seed),
        stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        raw_prompt=prompt,
        top_logprobs=req.logprobs,
    )


def _by_text(top: tuple[TopLogprob, ...]) -> dict[str, float]:
    """Alternatives keyed by text, likeliest first, as the legacy API has them: of two that read the same, the likelier."""
    out: dict[str, float] = {}
    for a in top:
        out.setdefault(a.token, a.logprob)
    return out


MAX_LOGPROBS = 5
"""OpenAI's limit for a legacy completion's ``logprobs``."""


def completion_logprobs(
    entries: tuple[TokenLogprob, ...] | list[TokenLogprob], offset: int = 0
) -> tuple[dict[str, Any], int]:
    """A legacy ``logprobs`` object for ``entries`` and where the text after them starts.

    ``offset`` is where their text starts in the answer.
    """
    offsets = []
    for t in entries:
        offsets.append(offset)
        offset += len(t.token)
    body = {
        "tokens": [t.token for t in entries],
        "token_logprobs": [t.logprob for t in entries],
        "top_logprobs": [_by_text(t.top) for t in entries],
        "text_offset": offsets,
    }
    return body, offset


def text_completion(
    completion_id: str,
    model: str,
    created: int,
    text: str | None,
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` object: the whole answer, or one stream chunk (``text`` None: a usage-only chunk)."""
    choices = [] if text is None else [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]
    obj: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        obj["usage"] = usage
    return obj
