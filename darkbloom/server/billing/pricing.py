"""Prices per model and the cost of a request, pure: integer micro-USD.

A price is micro-USD per million tokens, input and output. A model with no
price is free, so a local network works with no billing set-up; a priced
model charges at least the minimum per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from darkbloom.protocol import ChatMessage

MIN_CHARGE_MICRO_USD = 100
# Per-message template overhead (role markers, separators) on top of the text's bytes.
MESSAGE_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Price:
    """micro-USD per million input and output tokens."""

    input_per_m: int = 0
    output_per_m: int = 0

    @property
    def free(self) -> bool:
        return self.input_per_m == 0 and self.output_per_m == 0


FREE = Price()


def cost(price: Price, prompt_tokens: int, completion_tokens: int, min_charge: int = MIN_CHARGE_MICRO_USD) -> int:
    """The charge for a request: exact token cost rounded up, at least ``min_charge`` unless free."""
    if price.free:
        return 0
    raw = prompt_tokens * price.input_per_m + completion_tokens * price.output_per_m
    return max(-(-raw // 1_000_000), min_charge)


def prompt_token_bound(messages: tuple[ChatMessage, ...], extra_bytes: int = 0) -> int:
    """An upper bound on the prompt's token count without a tokenizer.

    Byte-level BPE never makes more tokens than bytes, so UTF-8 length plus
    template overhead bounds it from above (the hold is a worst case).
    ``extra_bytes`` counts prompt text outside ``messages``: a raw completions
    prompt, the tools the template renders, a sealed body's ciphertext.
    """
    total = PROMPT_OVERHEAD_TOKENS + extra_bytes
    for m in messages:
        total += len(m.content.encode()) + len(m.role) + MESSAGE_OVERHEAD_TOKENS
    return total


def worst_case(
    price: Price,
    messages: tuple[ChatMessage, ...],
    max_tokens: int,
    min_charge: int = MIN_CHARGE_MICRO_USD,
    extra_bytes: int = 0,
) -> int:
    """The hold for a request: the most it can cost."""
    return cost(price, prompt_token_bound(messages, extra_bytes), max(0, max_tokens), min_charge)
