"""Constrained decoding: a logits processor that keeps an answer inside a JSON schema.

llguidance walks the grammar (``darkbloom.protocol.structured``) token by
token and gives, for each step, the set of tokens that keep the text a
prefix of a valid answer; every other token's logit becomes -inf before the
sampler sees it. Once the JSON is complete only the end-of-sequence tokens
are left, so the answer stops there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from darkbloom.protocol.structured import grammar

log = logging.getLogger(__name__)


def can_constrain(model_dir: Path) -> bool:
    """Whether answers of the model in ``model_dir`` can be constrained: llguidance and a fast tokenizer."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return (model_dir / "tokenizer.json").is_file()


def grammar_tokenizer(tok: Any) -> Any:
    """llguidance's view of an mlx-lm tokenizer, ending on any of its end-of-sequence tokens.

    Build once per model: it walks the whole vocabulary.
    """
    import llguidance.hf

    eos = sorted(getattr(tok, "eos_token_ids", None) or {tok.eos_token_id})
    return llguidance.hf.from_tokenizer(tok._tokenizer, eos_token=eos)


class JsonConstraint:
    """An mlx-lm logits processor: ``(tokens so far, logits) -> logits`` with disallowed tokens at -inf.

    Args:
        tokenizer: From ``grammar_tokenizer``.
        schema: JSON text of the schema the answer must match.

    Raises:
        ValueError: the schema does not compile (the message says why).
    """

    def __init__(self, tokenizer: Any, schema: str) -> None:
        from llguidance import LLMatcher
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = LLMatcher(tokenizer, grammar(schema))
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self._vocab = tokenizer.vocab_size
        self._eos = tokenizer.eos_token
        self._bits = allocate_token_bitmask(1, self._vocab)
        self._started = False
        self.error = ""

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx
        import numpy as np
        from llguidance.numpy import fill_next_token_bitmask

        if self._started:  # every call after the first brings the token sampled last
            token = int(tokens[-1].item())
            if not self.matcher.is_stopped() and not self.matcher.consume_token(token) and not self.error:
                self.error = self.matcher.get_error() or f"token {token} left the grammar"
                log.warning("constrained decoding failed: %s", self.error)
        self._started = True
        if self.error:
            allowed = np.zeros(self._vocab, dtype=bool)
            allowed[self._eos] = True  # end the answer rather than go on unconstrained
        else:
            fill_next_token_bitmask(self.matcher, self._bits)
            allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab].astype(bool)
        width = logits.shape[-1]
        if width > self._vocab:  # padded embedding rows: never a real token
            allowed = np.concatenate([allowed, np.zeros(width - self._vocab, dtype=bool)])
        return mx.where(mx.array(allowed[:width]), logits, mx.array(-mx.inf, dtype=logits.dtype))
