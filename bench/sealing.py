"""What sealed mode costs: seal/open of request bodies and response chunks vs plain JSON.

Run: ``python -m bench.sealing`` (prints a markdown table). The peer is what
compatible mode does without sealing: msgspec-encoding the same body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import msgspec

from darkbloom.node.identity import NodeKeys
from darkbloom.protocol.sealed import open_chunk, open_request, response_key, seal_chunk, seal_request


def _per_call_us(fn: Callable[[], object], min_s: float = 0.3) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_s:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    keys = [NodeKeys.generate() for _ in range(3)]
    recipients = {k.node_id: bytes(k.encryption_key.public_key) for k in keys}
    rows = []
    for size in (1_000, 64_000, 1_000_000):
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * size}]}).encode()
        env, ck = seal_request(body, "m", recipients)
        plain = _per_call_us(lambda b=body: msgspec.json.encode(msgspec.json.decode(b)))
        seal = _per_call_us(lambda b=body: seal_request(b, "m", recipients))
        opened = _per_call_us(lambda e=env: open_request(e, "m", keys[0].node_id, keys[0].encryption_key))
        rows.append((f"request {size // 1000} kB, k=3", plain, seal, opened))
    key = response_key(bytes(32), "node-x")
    sealed = seal_chunk(key, 0, "token")
    plain = _per_call_us(lambda: msgspec.json.encode({"text": "token"}))
    rows.append(("response chunk (5 B)", plain, _per_call_us(lambda: seal_chunk(key, 0, "token")), _per_call_us(lambda: open_chunk(key, 0, sealed))))
    print("| payload | plain JSON (us) | seal (us) | open (us) | seal / plain |")
    print("|---|---:|---:|---:|---:|")
    for name, p, s, o in rows:
        print(f"| {name} | {p:.1f} | {s:.1f} | {o:.1f} | {s / p:.1f}x |")


if __name__ == "__main__":
    main()
