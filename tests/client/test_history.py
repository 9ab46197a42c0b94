"""Local chat history: private file, newest first, whole conversations back."""

from __future__ import annotations

import stat
from pathlib import Path

from darkbloom.client.history import ChatHistory, StoredMessage


def test_conversations_are_saved_privately_and_listed_newest_first(tmp_path: Path) -> None:
    t = iter(range(100, 200))
    h = ChatHistory(tmp_path / "home" / "chats.db", clock=lambda: float(next(t)))
    first = h.new_conversation("m1", "be brief")
    h.add_message(first, StoredMessage("user", "  what is\nmlx?  "))
    h.add_message(
        first,
        StoredMessage(
            "assistant",
            "an array framework",
            model="m1",
            privacy="sealed",
            provider="n1",
            completion_tokens=4,
            tokens_per_s=12.5,
        ),
    )
    second = h.new_conversation("m2")
    h.add_message(second, StoredMessage("user", "hello"))
    h.new_conversation("m3")  # never used: not listed
    assert [(c.id, c.title, c.model, c.messages) for c in h.list_conversations()] == [
        (second, "hello", "m2", 1),
        (first, "what is mlx?", "m1", 2),
    ]
    h.update_conversation(first, model="m9")
    h.close()

    again = ChatHistory(tmp_path / "home" / "chats.db")
    conv = again.load(first)
    assert conv is not None and conv.model == "m9" and conv.system_prompt == "be brief"
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[1] == StoredMessage(
        "assistant",
        "an array framework",
        model="m1",
        privacy="sealed",
        provider="n1",
        completion_tokens=4,
        tokens_per_s=12.5,
    )
    assert again.load(12345) is None
    again.close()
    assert stat.S_IMODE((tmp_path / "home" / "chats.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
