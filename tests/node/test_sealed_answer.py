"""What a node's answer to a consumer-sealed request leaves in the clear: nothing of its content."""

from __future__ import annotations

from darkbloom.node.attestation import ResponseSealer, complete_frame
from darkbloom.protocol import InferenceRequest, SamplingParams, TokenLogprob, TopLogprob, Usage
from darkbloom.protocol.sealed import decode_piece, open_chunk


def test_a_sealed_answer_carries_its_logprobs_inside_the_ciphertext_only() -> None:
    lp = (TokenLogprob("Paris", -0.1, "", (TopLogprob("Paris", -0.1),)),)
    assert ResponseSealer(None, "").chunk_fields(0, "Paris", (), lp)["logprobs"] == lp
    key = b"k" * 32
    sealed = ResponseSealer(key, "h").chunk_fields(3, "Paris", (), lp)
    assert "logprobs" not in sealed and "Paris" not in str(sealed)  # their tokens would spell the text out
    assert decode_piece(open_chunk(key, 3, sealed["sealed"])).logprobs == lp


def test_a_sealed_answer_does_not_say_how_much_of_its_prompt_was_cached() -> None:
    req = InferenceRequest(request_id="r1", model="m", messages=(), params=SamplingParams())
    usage = Usage(prompt_tokens=40, completion_tokens=3, cached_tokens=32)
    private = complete_frame(None, req, ResponseSealer(b"k" * 32, "h", private=True), usage, "stop")
    assert private.usage == Usage(prompt_tokens=40, completion_tokens=3, cached_tokens=0)
    plain = complete_frame(None, req, ResponseSealer(None, ""), usage, "stop")  # the coordinator's own: it saw the prompt
    assert plain.usage.cached_tokens == 32
