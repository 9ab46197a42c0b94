"""The streamed content event built from a template is byte for byte the general one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from darkbloom.protocol.openai import chat_chunk
from darkbloom.server.api.adapter import sse
from darkbloom.server.api.chat import content_sse


@given(
    text=st.text(min_size=1),
    model=st.text(min_size=1, max_size=40),
    created=st.integers(min_value=0, max_value=2**40),
)
def test_templated_content_event_equals_the_general_one(text: str, model: str, created: int) -> None:
    event = content_sse("chatcmpl-abc", model, created)
    assert event(text) == sse(chat_chunk("chatcmpl-abc", model, created, content=text))
