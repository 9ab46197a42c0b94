"""``darkbloom chat``: talk to a model in the terminal.

Answers stream in as Markdown; every answer ends with its token count,
speed, cost and a trust badge (sealed or coordinator-visible, and which node
answered). Escape stops a generation (the coordinator cancels it on the
node). Turns are saved to the local history as they finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Input, Markdown, Static
from textual.worker import Worker

from darkbloom.client.history import ChatHistory, StoredMessage
from darkbloom.client.http import ClientError, DarkbloomClient, StreamEnd, StreamStart, TextDelta
from darkbloom.tui.chat.conversations import ConversationsScreen
from darkbloom.tui.chat.messages import AnswerStats, AssistantMessage, Note, UserMessage, answer_meta
from darkbloom.tui.chat.picker import ModelPicker
from darkbloom.tui.chat.system import SystemPromptScreen

CSS = """
#messages { height: 1fr; padding: 0 1; }
UserMessage { background: $boost; border-left: thick $accent; margin: 1 0 0 0; padding: 0 1; }
.assistant { height: auto; margin: 1 0 0 0; }
.assistant .answer { margin: 0; padding: 0 1; }
.assistant .meta { color: $text-muted; padding: 0 1; }
Note { color: $warning; padding: 0 1; margin: 1 0 0 0; }
#status { height: 1; padding: 0 1; color: $text-muted; }
.dialog { width: 80%; height: auto; max-height: 80%; border: thick $primary; background: $surface; padding: 1 2; }
ModelPicker, SystemPromptScreen, ConversationsScreen { align: center middle; }
#system-text { height: 10; }
#models { height: auto; max-height: 20; }
"""


class ChatApp(App[None]):
    """The chat client.

    Args:
        client: The coordinator client (a consumer key is needed).
        history: Where conversations are saved; ``None`` keeps nothing.
        model: Start with this model (else the only one served, else a picker).
        system_prompt: Starts every request when set.
        conversation_id: Reopen a saved conversation.
        max_tokens, temperature: Sampling for every answer (coordinator defaults when ``None``).
        clock: Seconds, for tokens/s (tests pass a fixed one).
    """

    TITLE = "darkbloom chat"
    CSS = CSS
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+o", "pick_model", "Model"),
        Binding("ctrl+s", "system_prompt", "System prompt"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+l", "conversations", "History"),
        Binding("ctrl+t", "toggle_theme", "Theme"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        client: DarkbloomClient,
        *,
        history: ChatHistory | None = None,
        model: str | None = None,
        system_prompt: str = "",
        conversation_id: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        theme: str = "textual-dark",
    ) -> None:
        super().__init__()
        self.client = client
        self.history = history
        self.model = model
        self.system_prompt = system_prompt
        self.conversation_id = conversation_id
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.clock = clock
        self.turns: list[dict[str, str]] = []
        self.generation: Worker[None] | None = None
        self._start_theme = theme

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield VerticalScroll(id="messages")
        yield Static("", id="status", markup=False)
        yield Input(placeholder="Type a message, Enter to send", id="prompt")
        yield Footer()

    async def on_mount(self) -> None:
        self.theme = self._start_theme
        self.query_one("#prompt", Input).focus()
        if self.conversation_id is not None:
            await self._open(self.conversation_id)
        self._update_titles()
        if self.model is None:
            self.choose_initial_model()

    async def on_unmount(self) -> None:
        await self.client.aclose()

    # ---- state shown around the conversation ----------------------------------------------

    def _update_titles(self) -> None:
        self.sub_title = f"{self.model or 'no model'} · {self.client.url}"
        system = f"system prompt: {self.system_prompt[:60]}" if self.system_prompt else "no system prompt"
        self.set_status(system)

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    async def note(self, text: str) -> None:
        box = self.query_one("#messages", VerticalScroll)
        await box.mount(Note(text, markup=False))
        box.scroll_end(animate=False)

    @property
    def generating(self) -> bool:
        return self.generation is not None and self.generation.is_running

    # ---- models ---------------------------------------------------------------------------

    async def _served_models(self, none_served: str) -> list[str]:
        """The served models, or ``[]`` after telling the user why there are none to pick."""
        try:
            models = await self.client.models()
        except ClientError as exc:
            await self.note(f"Cannot list models: {exc}")
            return []
        if not models:
            await self.note(none_served)
        return models

    @work(exclusive=True, group="models")
    async def choose_initial_model(self) -> None:
        models = await self._served_models("No model is being served right now; try again in a moment (Ctrl+O).")
        if len(models) == 1:
            self.model = models[0]
            self._update_titles()
        elif models:
            self.push_screen(ModelPicker(models, self.model), self._picked)

    @work(exclusive=True, group="models")
    async def action_pick_model(self) -> None:
        models = await self._served_models("No model is being served right now.")
        if models:
            self.push_screen(ModelPicker(models, self.model), self._picked)

    def _picked(self, model: str | None) -> None:
        if model and model != self.model:
            self.model = model
            if self.history is not None and self.conversation_id is not None:
                self.history.update_conversation(self.conversation_id, model=model)
        self._update_titles()
        self.query_one("#prompt", Input).focus()

    # ---- system prompt, conversations, theme ----------------------------------------------

    def action_system_prompt(self) -> None:
        def saved(prompt: str | None) -> None:
            if prompt is not None:
                self.system_prompt = prompt
                if self.history is not None and self.conversation_id is not None:
                    self.history.update_conversation(self.conversation_id, system_prompt=prompt)
            self._update_titles()

        self.push_screen(SystemPromptScreen(self.system_prompt), saved)

    async def action_new_conversation(self) -> None:
        if self.generating:
            return
        self.conversation_id = None
        self.turns = []
        await self.query_one("#messages", VerticalScroll).remove_children()
        self._update_titles()

    def action_conversations(self) -> None:
        if self.history is None or self.generating:
            return

        async def chosen(conversation_id: int | None) -> None:
            if conversation_id is not None:
                await self._open(conversation_id)
            self._update_titles()

        self.push_screen(ConversationsScreen(self.history.list_conversations()), chosen)

    async def _open(self, conversation_id: int) -> None:
        conv = self.history.load(conversation_id) if self.history is not None else None
        box = self.query_one("#messages", VerticalScroll)
        await box.remove_children()
        if conv is None:
            await self.note(f"No saved conversation #{conversation_id}.")
            return
        self.conversation_id, self.model, self.system_prompt = conv.id, conv.model, conv.system_prompt
        self.turns = [{"role": m.role, "content": m.content} for m in conv.messages]
        for m in conv.messages:
            if m.role == "user":
                await box.mount(UserMessage(m.content))
            else:
                stats = AnswerStats(
                    tokens=m.completion_tokens,
                    exact=not m.stopped,
                    tokens_per_s=m.tokens_per_s,
                    cost_micro_usd=m.cost_micro_usd,
                    privacy=m.privacy or "coordinator-visible",
                    provider=m.provider or None,
                    stopped=m.stopped,
                )
                await box.mount(AssistantMessage(m.content, answer_meta(stats)))
        box.scroll_end(animate=False)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    # ---- sending and stopping -------------------------------------------------------------

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.generating:
            self.notify("Still answering; press Esc to stop it first.")
            return
        if self.model is None:
            await self.note("Pick a model first (Ctrl+O).")
            return
        event.input.value = ""
        self.generation = self.send(text)

    def action_stop(self) -> None:
        if self.generating and self.generation is not None:
            self.generation.cancel()

    @work(exclusive=True, group="generation")
    async def send(self, text: str) -> None:
        """Stream one answer into the conversation; cancelling this worker stops the generation."""
        box = self.query_one("#messages", VerticalScroll)
        model = self.model or ""
        question = UserMessage(text)
        await box.mount(question)
        answer = AssistantMessage()
        await box.mount(answer)
        box.scroll_end(animate=False)
        messages = (
            ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            + self.turns
            + [{"role": "user", "content": text}]
        )
        stats = AnswerStats()
        parts: list[str] = []
        stream = Markdown.get_stream(answer.markdown)
        started = self.clock()
        first_at: float | None = None
        self.set_status(f"{model} is answering… (Esc to stop)")
        events = self.client.chat_stream(model, messages, max_tokens=self.max_tokens, temperature=self.temperature)
        try:
            # aclosing: a stop must close the HTTP stream now (so the coordinator cancels the node's work),
            # not whenever the abandoned generator is collected.
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, StreamStart):
                        stats.privacy, stats.provider, stats.trust_level = (
                            event.privacy,
                            event.provider,
                            event.trust_level,
                        )
                        stats.request_id = event.request_id
                    elif isinstance(event, TextDelta):
                        if first_at is None:
                            first_at = self.clock()
                        parts.append(event.text)
                        stats.tokens += 1
                        await stream.write(event.text)
                        box.scroll_end(animate=False)
                    elif isinstance(event, StreamEnd) and event.usage:
                        stats.tokens, stats.exact = int(event.usage.get("completion_tokens", stats.tokens)), True
                        cost = event.usage.get("cost_micro_usd")
                        stats.cost_micro_usd = int(cost) if isinstance(cost, (int, float)) else None
        except asyncio.CancelledError:
            stats.stopped = True
            await self._finish(answer, stream, text, model, parts, stats, started, first_at)
            raise
        except ClientError as exc:
            await stream.stop()
            await question.remove()
            await answer.remove()
            await self.note(f"No answer: {exc}")
            self.query_one("#prompt", Input).value = text  # give the prompt back to retry
            self._update_titles()
            return
        await self._finish(answer, stream, text, model, parts, stats, started, first_at)

    async def _finish(
        self,
        answer: AssistantMessage,
        stream: object,
        text: str,
        model: str,
        parts: list[str],
        stats: AnswerStats,
        started: float,
        first_at: float | None,
    ) -> None:
        await stream.stop()  # type: ignore[attr-defined]
        now = self.clock()
        if first_at is not None:
            stats.ttft_s = first_at - started
            if stats.tokens > 1 and now > first_at:
                stats.tokens_per_s = (stats.tokens - 1) / (now - first_at)
        content = "".join(parts)
        answer.set_meta(answer_meta(stats))
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": content}]
        self._save(text, model, content, stats)
        self._update_titles()

    def _save(self, text: str, model: str, content: str, stats: AnswerStats) -> None:
        if self.history is None:
            return
        if self.conversation_id is None:
            self.conversation_id = self.history.new_conversation(model, self.system_prompt)
        self.history.add_message(self.conversation_id, StoredMessage("user", text, model=model))
        self.history.add_message(
            self.conversation_id,
            StoredMessage(
                "assistant",
                content,
                model=model,
                request_id=stats.request_id,
                privacy=stats.privacy,
                provider=stats.provider or "",
                completion_tokens=stats.tokens,
                tokens_per_s=stats.tokens_per_s,
                cost_micro_usd=stats.cost_micro_usd,
                stopped=stats.stopped,
            ),
        )
