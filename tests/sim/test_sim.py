"""The simulator: every request ends exactly once, runs are reproducible, and routing choices matter."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from darkbloom.cli.main import app
from darkbloom.server.routing.state import RoutingConfig
from darkbloom.sim.engine import Scenario, simulate
from darkbloom.sim.report import OUTCOMES, percentile
from darkbloom.sim.run import SimOptions, arrivals_for, run
from darkbloom.sim.trace import load_trace, synthetic


def test_every_request_ends_in_exactly_one_outcome_and_runs_are_reproducible() -> None:
    opts = SimOptions(nodes=30, requests=2000, policies=("ours", "random"))
    first, again = run(opts), run(opts)
    for out in first:
        assert out.arrived == 2000 == sum(out.counts.values()) == out.finished
        assert set(out.counts) <= set(OUTCOMES)
        assert len(out.ttft) >= out.counts["completed"]
        assert out.counts["completed"] > 1500
    assert [o.row() | {"wall s": ""} for o in first] == [o.row() | {"wall s": ""} for o in again]


def test_ours_beats_random_on_time_to_first_token_without_refusing_more() -> None:
    ours, rnd = run(SimOptions(nodes=40, requests=4000, policies=("ours", "random")))
    assert percentile(sorted(ours.ttft), 50) < 0.8 * percentile(sorted(rnd.ttft), 50)
    assert percentile(sorted(ours.ttft), 95) < percentile(sorted(rnd.ttft), 95)
    assert ours.counts["rejected_429"] <= rnd.counts["rejected_429"] + 0.01 * ours.arrived


def test_overload_is_refused_early_not_left_to_time_out() -> None:
    arrivals = synthetic(3000, rate_per_s=50.0, models=["qwen-8b"], seed=3)
    out = simulate(arrivals, Scenario(nodes=10, join_fraction=0, fail_fraction=0), RoutingConfig())
    assert out.counts["rejected_429"] > 1000  # the fleet completes a few requests a second
    assert out.counts["queue_timeout"] == 0  # refused at once with Retry-After instead of waiting 120 s


def test_trace_files_and_the_cli(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,model,prompt_tokens,output_tokens\n0.5,qwen-8b,100,20\n0.0,qwen-32b,300,40\n")
    assert [a.at for a in load_trace(trace)] == [0.0, 0.5]  # sorted by arrival
    result = CliRunner().invoke(app, ["sim", "--nodes", "5", "--trace", str(trace), "--policy", "ours"])
    assert result.exit_code == 0, result.output
    assert "| ours |" in result.output and "100.0%" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arrival_s": 0, "model": "m", "prompt_tokens": 1, "output_tokens": 1}\n{"arrival_s": "soon"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_trace(bad)
    result = CliRunner().invoke(app, ["sim", "--trace", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output


def test_synthetic_arrivals_are_heavy_tailed() -> None:
    arrivals = arrivals_for(SimOptions(nodes=10, requests=5000))
    prompts = sorted(a.prompt_tokens for a in arrivals)
    assert percentile(prompts, 99) > 5 * percentile(prompts, 50)
