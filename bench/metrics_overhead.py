"""What metrics cost on the relay's hot path: frames/s through ``Relay.frames`` with and without the tap.

    PYTHONPATH=. python bench/metrics_overhead.py [--chunks 200000]

Prints two markdown tables: the relay with and without the metrics tap (peer: no
hooks), and the per-chunk tap alone against the straightforward prometheus-client
way of recording the same two series (peer: labelled ``Histogram`` + ``Counter``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit

from prometheus_client import CollectorRegistry, Counter, Histogram

from darkbloom.protocol import ChatMessage, Chunk, Complete, SamplingParams, Usage
from darkbloom.server.fleet import Fleet, InFlight
from darkbloom.server.gateway import InferenceJob, Relay, Timing
from darkbloom.server.metrics import GAP_BUCKETS, CoordinatorMetrics
from darkbloom.server.settings import Settings


async def relay_rate(chunks: int, hooks: list) -> float:  # type: ignore[type-arg]
    """Chunks per second a relay yields when its queue is already full."""
    job = InferenceJob("r1", "m1", (ChatMessage("user", "hi"),), SamplingParams(), "acct")
    flight = InFlight("r1", "m1", "node-a")
    for i in range(chunks):
        flight.frames.put_nowait(Chunk(request_id="r1", seq=i, text="tok "))  # type: ignore[arg-type]
    flight.frames.put_nowait(Complete(request_id="r1", usage=Usage(1, chunks)))  # type: ignore[arg-type]
    relay = Relay(job, flight, Fleet(), hooks, Settings(), Timing())
    start = time.perf_counter()
    async for _ in relay.frames():
        pass
    return chunks / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = max(asyncio.run(relay_rate(args.chunks, [])) for _ in range(args.repeat))
    metrics = CoordinatorMetrics()
    tapped = max(asyncio.run(relay_rate(args.chunks, [metrics])) for _ in range(args.repeat))
    print(f"| relay ({args.chunks} chunks, best of {args.repeat}) | chunks/s | µs/chunk | vs no hooks |")
    print("|---|---:|---:|---:|")
    print(f"| no hooks (peer) | {base:,.0f} | {1e6 / base:.2f} | 1.00x |")
    print(f"| with CoordinatorMetrics tap | {tapped:,.0f} | {1e6 / tapped:.2f} | {base / tapped:.2f}x |")

    job = InferenceJob("r1", "m1", (), SamplingParams(), "acct")
    r = CollectorRegistry()
    hist = Histogram("gap", "gap", ["model"], buckets=GAP_BUCKETS, registry=r)
    relayed = Counter("relayed", "relayed", registry=r)
    n = 200_000

    def plain() -> None:
        hist.labels("unknown").observe(0.03)
        relayed.inc(4)

    peer = min(timeit.repeat(plain, number=n, repeat=args.repeat)) / n * 1e9
    ours = min(timeit.repeat(lambda: metrics.chunk(job, 0.03, 4), number=n, repeat=args.repeat)) / n * 1e9
    print()
    print("| per-chunk recording (inter-token gap + relay bytes) | ns/chunk | vs peer |")
    print("|---|---:|---:|")
    print(f"| prometheus-client Histogram.labels().observe + Counter.inc (peer) | {peer:,.0f} | 1.00x |")
    print(f"| CoordinatorMetrics.chunk (LoopHistogram + int) | {ours:,.0f} | {ours / peer:.2f}x |")


if __name__ == "__main__":
    main()
