"""The simulator runs behind the routing defaults (README "Tuned with the simulator").

    python -m bench.sim_tuning [--quick]

Each table compares variants of one default on the same seeded fleets and
arrivals (``policy=ours``), averaged over seeds. ``--quick`` runs smaller fleets.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from darkbloom.server.routing.hedging import HedgeConfig
from darkbloom.server.routing.state import RoutingConfig
from darkbloom.sim.report import percentile, table
from darkbloom.sim.run import SimOptions, run

BASE = RoutingConfig()


def sweep(title: str, variants: list[tuple[str, RoutingConfig]], nodes: int, requests: int, seeds: int, load: float) -> str:
    rows = []
    for name, config in variants:
        acc = []
        for seed in range(1, seeds + 1):
            out = run(SimOptions(nodes=nodes, requests=requests, policies=("ours",), seed=seed, load=load, config=config))[0]
            t, n = sorted(out.ttft), out.arrived
            acc.append((
                percentile(t, 50), percentile(t, 95), percentile(t, 99),
                out.counts["completed"] / n, out.counts["rejected_429"] / n, out.busy_seconds / out.slot_seconds,
            ))
        m = [statistics.mean(col) for col in zip(*acc)]
        rows.append({
            "variant": name, "TTFT p50 s": f"{m[0]:.2f}", "TTFT p95 s": f"{m[1]:.2f}", "TTFT p99 s": f"{m[2]:.2f}",
            "completed": f"{m[3]:.1%}", "429 rate": f"{m[4]:.1%}", "utilization": f"{m[5]:.0%}",
        })
    head = f"### {title}: {nodes} nodes, {requests} requests, load {load:.0%}, mean of {seeds} seeds\n\n"
    return head + table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    big, big_requests = (200, 10_000) if args.quick else (1000, 50_000)
    early = [(f"early 429 at {s} s", dataclasses.replace(BASE, early_reject_wait_s=s)) for s in (10, 15, 30, 60)]
    early.append(("never early", dataclasses.replace(BASE, early_reject_wait_s=1e9)))
    for load in (0.9, 1.3):
        print(sweep("Early 429 threshold", early, 12, 3000, 5, load), end="\n\n")
    warm = [
        ("1 load at a time (original)", dataclasses.replace(BASE, warm_max_loads_per_plan=1, warm_requests_per_load=10**9)),
        ("1 per 8 demand, <= 4 per plan", dataclasses.replace(BASE, warm_max_loads_per_plan=4)),
        ("1 per 8 demand, <= 16 per plan (default)", BASE),
    ]
    print(sweep("Warm pool", warm, 200, 20_000, 1, 0.9), end="\n\n")
    print(sweep("Warm pool", warm, big, big_requests, 1, 0.9), end="\n\n")
    other = [
        ("default", BASE),
        ("queue depth 16", dataclasses.replace(BASE, queue_depth=16)),
        ("queue depth 64", dataclasses.replace(BASE, queue_depth=64)),
        ("no hedging", dataclasses.replace(BASE, hedge=HedgeConfig(enabled=False))),
        ("hedge deadline 2 x TTFT", dataclasses.replace(BASE, hedge=HedgeConfig(deadline_factor=2.0))),
        ("hedge deadline 8 x TTFT", dataclasses.replace(BASE, hedge=HedgeConfig(deadline_factor=8.0))),
        ("sample 4 nodes", dataclasses.replace(BASE, sample_k=4)),
        ("sample 32 nodes", dataclasses.replace(BASE, sample_k=32)),
    ]
    print(sweep("Queue, hedging, sampling", other, 200, 10_000, 3, 0.9))


if __name__ == "__main__":
    main()
