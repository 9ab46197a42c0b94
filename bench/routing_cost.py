"""Routing decision cost at fleet scale: one ``route`` call, per policy, in microseconds.

    python -m bench.routing_cost [--nodes 1000] [--calls 20000]

The fleet is the simulator's (heterogeneous nodes, three models) with every
node reporting capacity; between calls the chosen node is committed (up to half of all slots busy) or
a random reservation released, so the indexes move as in production. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import time

from darkbloom.server.routing.route import POLICIES, Dispatch, route
from darkbloom.server.routing.state import FleetState, RouteRequest, RoutingConfig
from darkbloom.sim.cluster import MODELS, make_nodes
from darkbloom.sim.report import percentile, table


def measure(policy: str, nodes: int, calls: int) -> dict[str, str]:
    rng = random.Random(7)
    fleet = FleetState(RoutingConfig(policy=policy))
    for node in make_nodes(nodes, rng, warm_fraction=1.0):
        fleet.registry.add(node.node_id, node.model_infos(), node.hardware(), 0.0, capacity=node.capacity(0.0, rng, 16_384))
    models = list(MODELS)
    # Keep about half of the fleet's slots busy, as a loaded coordinator would.
    target = sum(fleet.total_slots(m) for m in models) // 2
    samples = []
    held: list[str] = []
    clock = time.perf_counter_ns
    for i in range(calls):
        req = RouteRequest(f"r{i}", models[i % 3], rng.randint(50, 4000), rng.randint(16, 1000))
        t0 = clock()
        d = route(req, fleet, 1.0)
        samples.append((clock() - t0) / 1000)
        if isinstance(d, Dispatch) and len(held) < target:
            fleet.commit(req, d.node_id, 1.0)
            held.append(req.request_id)
        elif held:
            fleet.release(held.pop(rng.randrange(len(held))), 1.0)
    samples.sort()
    return {
        "policy": policy,
        "nodes": str(nodes),
        "p50 µs": f"{percentile(samples, 50):.1f}",
        "p99 µs": f"{percentile(samples, 99):.1f}",
        "mean µs": f"{sum(samples) / len(samples):.1f}",
        "in flight at end": str(len(held)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    print(f"### route() cost, {args.nodes} nodes, {args.calls} calls per policy (target: ours p50 <= 50 µs)\n")
    print(table([measure(p, args.nodes, args.calls) for p in POLICIES]))


if __name__ == "__main__":
    main()
