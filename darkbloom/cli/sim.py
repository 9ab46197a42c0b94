"""``darkbloom sim``: the routing simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sim(
    nodes: Annotated[int, typer.Option(help="Simulated provider nodes at the start (5 % more join, 2 % fail).")] = 100,
    requests: Annotated[int, typer.Option(help="Requests to simulate (with --trace: the first N; 0 = all).")] = 10_000,
    trace: Annotated[Path | None, typer.Option(help="Trace file: CSV or JSON lines with arrival_s, model, prompt_tokens, output_tokens[, max_tokens].", exists=True, dir_okay=False)] = None,
    policy: Annotated[str, typer.Option(help="ours, least-loaded, round-robin, random, or all.")] = "all",
    load: Annotated[float, typer.Option(help="Synthetic arrival rate as a fraction of the warm fleet's rough capacity.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Random seed (the run is deterministic for a seed).")] = 1,
) -> None:
    """Simulate routing: the coordinator's own routing code, simulated nodes and clock; prints markdown tables."""
    from darkbloom.server.routing.route import POLICIES
    from darkbloom.sim.run import SimOptions, render, run

    policies = POLICIES if policy == "all" else tuple(p.strip() for p in policy.split(","))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise typer.BadParameter(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)} or all", param_hint="--policy")
    if nodes < 1 or requests < 0 or load <= 0:
        raise typer.BadParameter("--nodes must be >= 1, --requests >= 0 and --load > 0")
    opts = SimOptions(nodes=nodes, requests=requests, trace=trace, policies=policies, load=load, seed=seed)
    try:
        typer.echo(render(opts, run(opts)))
    except ValueError as exc:  # a bad trace row: say where, not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
