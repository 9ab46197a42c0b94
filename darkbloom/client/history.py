"""Conversations kept on the consumer's own machine: SQLite under the darkbloom home, 0600.

Prompts and answers are private, so the file is created readable by its
owner only and nothing here is ever sent anywhere. Operations are tiny and
synchronous (the chat app calls them between turns).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    privacy TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    tokens_per_s REAL,
    cost_micro_usd INTEGER,
    stopped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def history_path(home: Path) -> Path:
    return home / "chats.db"


@dataclass(frozen=True)
class StoredMessage:
    """One turn; assistant turns carry how they were served."""

    role: str
    content: str
    model: str = ""
    request_id: str = ""
    privacy: str = ""
    provider: str = ""
    completion_tokens: int = 0
    tokens_per_s: float | None = None
    cost_micro_usd: int | None = None
    stopped: bool = False


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    model: str
    updated: float
    messages: int


@dataclass
class Conversation:
    id: int
    model: str
    system_prompt: str
    title: str
    messages: list[StoredMessage] = field(default_factory=list)


class ChatHistory:
    """The conversation store.

    Args:
        path: The SQLite file (created 0600, its directory 0700, on first use).
        clock: Wall-clock seconds for the timestamps.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def new_conversation(self, model: str, system_prompt: str = "") -> int:
        now = self.clock()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO conversations (model, system_prompt, created, updated) VALUES (?, ?, ?, ?)",
                (model, system_prompt, now, now),
            )
        return int(cur.lastrowid or 0)

    def update_conversation(
        self, conversation_id: int, *, model: str | None = None, system_prompt: str | None = None
    ) -> None:
        with self._db:
            if model is not None:
                self._db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))
            if system_prompt is not None:
                self._db.execute(
                    "UPDATE conversations SET system_prompt = ? WHERE id = ?", (system_prompt, conversation_id)
                )

    def add_message(self, conversation_id: int, message: StoredMessage) -> None:
        """Append a turn; the first user turn becomes the conversation's title."""
        now = self.clock()
        m = message
        with self._db:
            self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, model, request_id, privacy,"
                " provider, completion_tokens, tokens_per_s, cost_micro_usd, stopped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    m.role,
                    m.content,
                    now,
                    m.model,
                    m.request_id,
                    m.privacy,
                    m.provider,
                    m.completion_tokens,
                    m.tokens_per_s,
                    m.cost_micro_usd,
                    int(m.stopped),
                ),
            )
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            if m.role == "user":
                title = " ".join(m.content.split())[:60]
                self._db.execute(
                    "UPDATE conversations SET title = ? WHERE id = ? AND title = ''", (title, conversation_id)
                )

    def list_conversations(self, limit: int = 100) -> list[ConversationSummary]:
        """Most recently updated first; conversations with no messages are left out."""
        rows = self._db.execute(
            "SELECT c.id, c.title, c.model, c.updated, COUNT(m.id)"
            " FROM conversations c JOIN messages m ON m.conversation_id = c.id"
            " GROUP BY c.id ORDER BY c.updated DESC, c.id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [ConversationSummary(int(r[0]), r[1], r[2], float(r[3]), int(r[4])) for r in rows]

    def load(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute(
            "SELECT id, model, system_prompt, title FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            return None
        conv = Conversation(int(row[0]), row[1], row[2], row[3])
        for r in self._db.execute(
            "SELECT role, content, model, request_id, privacy, provider, completion_tokens, tokens_per_s,"
            " cost_micro_usd, stopped FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ):
            conv.messages.append(StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8], bool(r[9])))
        return conv
