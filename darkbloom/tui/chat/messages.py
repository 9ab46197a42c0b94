"""The conversation's widgets, and the pure formatting of an answer's stats and trust badge."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static


@dataclass
class AnswerStats:
    """How one answer was served, as the client measured it."""

    tokens: int = 0
    exact: bool = False  # the coordinator's usage count, not our count of streamed pieces
    tokens_per_s: float | None = None
    ttft_s: float | None = None
    cost_micro_usd: int | None = None
    privacy: str = "coordinator-visible"
    provider: str | None = None
    trust_level: str | None = None
    stopped: bool = False
    request_id: str = ""


def trust_badge(privacy: str, provider: str | None, trust_level: str | None) -> str:
    """``sealed`` or ``coordinator-visible``, which node answered, and its trust level when known."""
    badge = "🔒 sealed" if privacy == "sealed" else "coordinator-visible"
    if provider:
        badge += f" · node {provider}"
    if trust_level:
        badge += f" ({trust_level})"
    return badge


def answer_meta(s: AnswerStats) -> str:
    """One line under an answer: tokens, speed, first-token latency, cost, trust badge."""
    parts = [f"{'' if s.exact else '~'}{s.tokens} tokens"]
    if s.tokens_per_s is not None:
        parts.append(f"{s.tokens_per_s:.1f} tok/s")
    if s.ttft_s is not None:
        parts.append(f"first token {s.ttft_s * 1000:.0f} ms")
    parts.append("cost —" if s.cost_micro_usd is None else f"cost ${s.cost_micro_usd / 1e6:.6f}")
    parts.append(trust_badge(s.privacy, s.provider, s.trust_level))
    if s.stopped:
        parts.append("stopped")
    return " · ".join(parts)


class UserMessage(Markdown):
    """What the user typed."""


class Note(Static):
    """A line from the app itself: an error, a stop, a model switch."""


class AssistantMessage(Vertical):
    """An answer: Markdown that grows as it streams, then a line of stats and the trust badge."""

    def __init__(self, text: str = "", meta: str = "") -> None:
        super().__init__(classes="assistant")
        self._text = text
        self._meta = meta

    def compose(self) -> ComposeResult:
        yield Markdown(self._text, classes="answer")
        yield Static(self._meta or "…", classes="meta", markup=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(".answer", Markdown)

    def set_meta(self, text: str) -> None:
        self.query_one(".meta", Static).update(text)
