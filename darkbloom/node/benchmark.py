"""``darkbloom node benchmark``: prefill and decode tokens/s of one model at several concurrencies.

Runs the node's own engine in-process (no coordinator), so the numbers are
what this machine can sell. Aggregate decode tok/s counts every completion
token of every stream over the time from the first token to the last.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from darkbloom.node.engine.base import EngineEvent, Failed, Finished, TextDelta
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.protocol import ChatMessage, SamplingParams

TOPICS = [
    "the sea",
    "a lighthouse",
    "a clockmaker",
    "the first snow",
    "a lost map",
    "a night train",
    "bees",
    "a city garden",
]


@dataclass(frozen=True)
class BenchRow:
    concurrency: int
    prompt_tokens: int
    completion_tokens: int
    prefill_tps: float
    decode_tps: float
    ttft_p50_ms: float


async def _one(engine: MLXEngine, rid: str, topic: str, max_tokens: int) -> tuple[float, float, int, int]:
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()
    start = time.perf_counter()
    msg = ChatMessage(
        role="user", content=f"Write a long, detailed story about {topic}. Take your time and describe everything."
    )
    engine.submit(rid, (msg,), SamplingParams(max_tokens=max_tokens, temperature=0.0), events)
    first = 0.0
    while True:
        ev = await events.get()
        if isinstance(ev, TextDelta) and not first:
            first = time.perf_counter()
        elif isinstance(ev, Finished):
            return first - start, time.perf_counter(), ev.usage.prompt_tokens, ev.usage.completion_tokens
        elif isinstance(ev, Failed):
            raise RuntimeError(ev.message)


async def run_benchmark(
    model_path: Path,
    concurrencies: tuple[int, ...] = (1, 4, 8),
    max_tokens: int = 64,
    progress: Callable[[int], None] = lambda _n: None,
) -> list[BenchRow]:
    """Measure each concurrency in turn on one engine (warmed up first)."""
    engine = MLXEngine(model_path, model_path.name, max_concurrency=max(concurrencies))
    await asyncio.to_thread(engine.wait_ready)
    rows: list[BenchRow] = []
    try:
        await _one(engine, "warmup", TOPICS[0], 4)
        for c in concurrencies:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *[_one(engine, f"b{c}-{i}", TOPICS[i % len(TOPICS)], max_tokens) for i in range(c)]
            )
            ttfts = [r[0] for r in results]
            first_token_at = t0 + min(ttfts)
            last_end = max(r[1] for r in results)
            prompt = sum(r[2] for r in results)
            completion = sum(r[3] for r in results)
            rows.append(
                BenchRow(
                    concurrency=c,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    prefill_tps=prompt / max(max(ttfts), 1e-9),
                    decode_tps=completion / max(last_end - first_token_at, 1e-9),
                    ttft_p50_ms=statistics.median(ttfts) * 1000,
                )
            )
            progress(1)
    finally:
        await asyncio.to_thread(engine.close)
    return rows


def format_rows(rows: list[BenchRow]) -> str:
    out = [
        "| concurrency | prompt tok | completion tok | prefill tok/s | decode tok/s (aggregate) | TTFT p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.concurrency} | {r.prompt_tokens} | {r.completion_tokens} | {r.prefill_tps:.1f} | {r.decode_tps:.1f} | {r.ttft_p50_ms:.0f} |"
        )
    return "\n".join(out)
