"""What JSON output and logprobs cost on a node: decode speed with and without them.

    python -m bench.decode_extras [--model DIR] [--concurrency 1,8] [--tokens 64]

Runs the node's engine (``MLXEngine``) on ``--model`` (default: the tiny
random model, built in a temporary directory; ``darkbloom up``'s demo lives
at ``~/.darkbloom/models/smollm2-135m-instruct``) and sends the same greedy
requests three ways: free; constrained to a schema whose one string must be
long (``minLength``, so it too runs for ``--tokens`` tokens); and with
``logprobs`` and 5 alternatives per token. Prints decode tokens/s per
concurrency for each and the ratios to free, measured in this one run (the
order rotating each round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from darkbloom.node.engine.base import Finished
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.protocol import ChatMessage, SamplingParams
from darkbloom.sim.report import table

PROMPT = (ChatMessage(role="user", content="Write a long story about a cat, as JSON."),)


async def run(engine: MLXEngine, n: int, params: SamplingParams) -> float:
    """``n`` requests at once; generated tokens per second of wall time."""

    async def one(i: int) -> int:
        q: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
        engine.submit(f"b{time.monotonic_ns()}-{i}", PROMPT, params, q)
        while not isinstance(ev := await q.get(), Finished):
            assert not hasattr(ev, "status"), ev  # a Failed
        return ev.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(n))))
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from darkbloom.node.models.tiny import build_tiny_model

        model = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", name="tiny")
    levels = [int(c) for c in args.concurrency.split(",")]
    engine = MLXEngine(model, "bench", max_concurrency=max(levels))
    engine.wait_ready(timeout=300)
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 8 * args.tokens}}, "required": ["story"]}
    free = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    constrained = SamplingParams(
        max_tokens=args.tokens, temperature=0.0, response_format="json_schema", json_schema=json.dumps(schema)
    )
    ways = {"free": free, "json": constrained, "logprobs": SamplingParams(max_tokens=args.tokens, temperature=0.0, top_logprobs=5)}
    rows = []
    try:
        for n in levels:
            asyncio.run(run(engine, n, free))  # warm up: compile, caches
            got: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            for r in range(args.rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    got[name].append(asyncio.run(run(engine, n, ways[name])))
            f, j, lp = (max(got[name]) for name in names)
            rows.append({
                "concurrency": str(n), "free tok/s": f"{f:.1f}", "JSON schema tok/s": f"{j:.1f}",
                "logprobs (top 5) tok/s": f"{lp:.1f}", "JSON/free": f"{j / f:.2f}x", "logprobs/free": f"{lp / f:.2f}x",
            })  # fmt: skip
    finally:
        engine.close()
    print(f"### JSON output and logprobs: greedy decode, {args.tokens} tokens per request, best of {args.rounds} ({model.name})\n")
    print(table(rows))


if __name__ == "__main__":
    main()
