"""Run the simulator for one or more policies and print the comparison."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from darkbloom.server.routing.route import POLICIES
from darkbloom.server.routing.state import RoutingConfig
from darkbloom.sim.cluster import MODELS, fleet_capacity_rps, lognormal_mean, make_nodes
from darkbloom.sim.engine import Scenario, simulate
from darkbloom.sim.report import Outcomes, bucket_table, table
from darkbloom.sim.trace import Arrival, load_trace, synthetic


@dataclasses.dataclass(frozen=True)
class SimOptions:
    nodes: int = 100
    requests: int = 10_000
    trace: Path | None = None
    policies: tuple[str, ...] = POLICIES
    load: float = 0.9
    seed: int = 1
    config: RoutingConfig = RoutingConfig()


def default_rate(nodes: int, load: float, seed: int) -> float:
    """Arrivals per second that put the warm fleet at ``load`` of its rough capacity."""
    sample = make_nodes(nodes, random.Random(seed), 0.8)
    return load * fleet_capacity_rps(sample, lognormal_mean(180, 0.9))


def arrivals_for(opts: SimOptions) -> list[Arrival]:
    if opts.trace is not None:
        return load_trace(opts.trace)[: opts.requests] if opts.requests else load_trace(opts.trace)
    return synthetic(opts.requests, default_rate(opts.nodes, opts.load, opts.seed), list(MODELS), opts.seed)


def run(opts: SimOptions) -> list[Outcomes]:
    """Simulate each policy over the same arrivals and fleet; returns one ``Outcomes`` per policy."""
    arrivals = arrivals_for(opts)
    results = []
    for policy in opts.policies:
        config = dataclasses.replace(opts.config, policy=policy)
        started = time.process_time()
        out = simulate(arrivals, Scenario(nodes=opts.nodes, seed=opts.seed), config)
        out.wall_s = time.process_time() - started
        results.append(out)
    return results


def render(opts: SimOptions, results: list[Outcomes]) -> str:
    """The markdown report: the policy comparison, then prompt-size buckets for each policy."""
    src = f"trace {opts.trace}" if opts.trace else f"synthetic, load {opts.load:.0%} of rough warm capacity"
    parts = [f"### {opts.nodes} nodes, {results[0].arrived if results else 0} requests ({src}, seed {opts.seed})", "", table([r.row() for r in results])]
    for r in results:
        parts += ["", f"#### {r.policy}: outcome by prompt size", "", bucket_table(r)]
    return "\n".join(parts)
