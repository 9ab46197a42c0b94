"""An attested provider node speaking the real protocol over the test client's WebSocket.

It signs with real keys and opens sealed requests with the node's own code
(``darkbloom.node.attestation``), so what these tests reject is what a real
node would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from starlette.testclient import TestClient

from darkbloom.node.attestation import NodeAttestor, ResponseSealer, complete_frame, open_sealed
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import (
    AttestationChallenge,
    Chunk,
    Error,
    Frame,
    Hardware,
    InferenceRequest,
    ModelInfo,
    Register,
    Registered,
    ToolCall,
    TrustStatus,
    Usage,
    decode,
    encode,
)
from darkbloom.protocol.sealed import SEALED_CONTENT_TYPE, SealedError
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.settings import Settings
from tests.server.conftest import Coordinator

USAGE = Usage(prompt_tokens=7, completion_tokens=3)


@dataclass
class FakeNode:
    """One attested node on an open test WebSocket."""

    ws: Any
    model: str = "m1"
    keys: NodeKeys = field(default_factory=NodeKeys.generate)
    answers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.attestor = NodeAttestor(
            self.keys, Hardware(chip="Test Chip", memory_gb=16), {self.model: "ab" * 32}, code_hash="cd" * 32
        )

    @property
    def node_id(self) -> str:
        return self.keys.node_id

    def send(self, frame: Frame) -> None:
        self.ws.send_bytes(encode(frame))

    def recv(self) -> Frame:
        return decode(self.ws.receive_bytes())

    def register(self, *, bundle_time: float | None = None) -> None:
        """Register with a signed bundle (dated ``bundle_time``) and read the ``registered`` reply."""
        self.send(
            Register(
                node_id=self.node_id,  # type: ignore[arg-type]
                models=(ModelInfo(id=self.model),),
                public_key=self.keys.encryption_public,
                attestation=self.attestor.bundle(now=bundle_time),
            )
        )
        reply = self.recv()
        assert isinstance(reply, Registered), reply

    def challenge(self) -> AttestationChallenge:
        frame = self.recv()
        assert isinstance(frame, AttestationChallenge), frame
        return frame

    def answer(self, challenge: AttestationChallenge) -> TrustStatus:
        response = self.attestor.answer(challenge, [self.model], 0)
        self.answers.append(response)
        self.send(response)
        return self.trust_status()

    def trust_status(self) -> TrustStatus:
        frame = self.recv()
        assert isinstance(frame, TrustStatus), frame
        return frame

    def join(self) -> None:
        """Register and pass the first challenge: routable."""
        self.register()
        status = self.answer(self.challenge())
        assert status.status == "trusted", status

    def request(self) -> InferenceRequest:
        frame = self.recv()
        assert isinstance(frame, InferenceRequest), frame
        return frame

    def serve(self, req: InferenceRequest, pieces: list[str | ToolCall], *, usage: Usage = USAGE) -> None:
        """Open the request with the node's code, stream ``pieces`` sealed, finish with a signed receipt."""
        try:
            _, _, sealer = open_sealed(req, self.keys)
        except SealedError as exc:
            self.send(Error(message=str(exc), code="sealed_open_failed", status=400, request_id=req.request_id))
            return
        self.stream(req, sealer, pieces)
        self.send(complete_frame(self.attestor, req, sealer, usage, "stop"))

    def stream(self, req: InferenceRequest, sealer: ResponseSealer, pieces: list[str | ToolCall]) -> None:
        """Send each piece (text, or a completed tool call) as one chunk."""
        for seq, piece in enumerate(pieces):
            fields = (
                sealer.chunk_fields(seq, piece) if isinstance(piece, str) else sealer.chunk_fields(seq, "", (piece,))
            )
            self.send(Chunk(request_id=req.request_id, seq=seq, **fields))  # type: ignore[arg-type]


def post_in_thread(
    coordinator: Coordinator, body: bytes | dict[str, Any], *, sealed: bool = False
) -> tuple[threading.Thread, dict[str, Any]]:
    """POST /v1/chat/completions from a thread (the test thread plays the node)."""
    out: dict[str, Any] = {}
    headers = {**coordinator.auth, **({"Content-Type": SEALED_CONTENT_TYPE} if sealed else {})}

    def run() -> None:
        if isinstance(body, dict):
            resp = coordinator.client.post("/v1/chat/completions", json=body, headers=headers)
        else:
            resp = coordinator.client.post("/v1/chat/completions", content=body, headers=headers)
        out.update(status=resp.status_code, text=resp.text, headers=dict(resp.headers))

    t = threading.Thread(target=run)
    t.start()
    return t, out


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]


def provider_keys(coordinator: Coordinator, model: str = "m1") -> dict[str, Any]:
    resp = coordinator.client.get("/v1/providers/keys", params={"model": model}, headers=coordinator.auth)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


def to_json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


@contextlib.contextmanager
def custom_coordinator(tmp_path: Path, hook: Any, **settings: Any) -> Iterator[Coordinator]:
    """A coordinator like the ``coordinator`` fixture's, with some settings changed."""
    s = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", max_body_bytes=64 * 1024, **settings)
    key, _ = asyncio.run(create_key_in(s.db_url))
    with TestClient(create_app(s, hooks=[hook])) as client:
        yield Coordinator(client, key, s)
