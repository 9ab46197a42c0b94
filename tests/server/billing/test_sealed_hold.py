"""A sealed request's hold is still a worst case, though the coordinator cannot read the prompt."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import SamplingParams
from darkbloom.protocol.openai import parse_chat_request, to_internal
from darkbloom.protocol.sealed import seal_request
from darkbloom.server.billing.hook import prompt_bytes_outside_messages
from darkbloom.server.billing.pricing import prompt_token_bound
from darkbloom.server.gateway import InferenceJob

KEYS = NodeKeys.generate()

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)}
)


@settings(max_examples=50, deadline=None)
@given(messages=st.lists(message, min_size=1, max_size=6))
def test_sealed_bound_is_at_least_the_plaintext_bound(messages: list[dict[str, str]]) -> None:
    body = json.dumps({"model": "m", "messages": messages, "max_tokens": 10}).encode()
    env, _ = seal_request(body, "m", {KEYS.node_id: bytes(KEYS.encryption_key.public_key)})
    sealed_job = InferenceJob("r", "m", (), SamplingParams(max_tokens=10), "acct", sealed=env)
    internal, _ = to_internal(parse_chat_request(body))
    assert prompt_token_bound((), prompt_bytes_outside_messages(sealed_job)) >= prompt_token_bound(internal)
