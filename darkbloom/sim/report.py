"""What a simulation measured, and the markdown tables that compare policies."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from darkbloom.sim.trace import PROMPT_BUCKETS, Arrival, bucket

OUTCOMES = ("completed", "rejected_429", "queue_timeout", "failed", "too_large", "no_node")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


@dataclass
class Outcomes:
    """Counters and samples from one run."""

    policy: str
    arrived: int = 0
    finished: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    by_bucket: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    last_finish: float = 0.0
    makespan_s: float = 0.0
    slot_seconds: float = 0.0
    busy_seconds: float = 0.0
    node_failures: int = 0
    loads: int = 0
    hedges: int = 0
    hedge_wins: int = 0
    wall_s: float = 0.0

    def record(self, arrival: Arrival, outcome: str, now: float) -> None:
        self.finished += 1
        self.counts[outcome] += 1
        self.by_bucket[bucket(arrival.prompt_tokens)][outcome] += 1
        if outcome == "completed":
            self.last_finish = max(self.last_finish, now)

    def row(self) -> dict[str, str]:
        t = sorted(self.ttft)
        n = max(1, self.arrived)
        return {
            "policy": self.policy,
            "TTFT p50 s": f"{percentile(t, 50):.2f}",
            "TTFT p95 s": f"{percentile(t, 95):.2f}",
            "TTFT p99 s": f"{percentile(t, 99):.2f}",
            "completed": f"{self.counts['completed'] / n:.1%}",
            "tokens/s": f"{self.tokens / max(self.makespan_s, 1e-9):,.0f}",
            "makespan s": f"{self.makespan_s:.0f}",
            "utilization": f"{self.busy_seconds / max(self.slot_seconds, 1e-9):.0%}",
            "429 rate": f"{self.counts['rejected_429'] / n:.1%}",
            "queue timeouts": str(self.counts["queue_timeout"]),
            "failed": str(self.counts["failed"]),
            "hedges (won)": f"{self.hedges} ({self.hedge_wins})",
            "loads": str(self.loads),
            "wall s": f"{self.wall_s:.1f}",
        }


def table(rows: list[dict[str, str]]) -> str:
    """A markdown table of dicts that share keys."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def bucket_table(out: Outcomes) -> str:
    """Per prompt-size bucket: served / busy (429) / too slow (queue timeout) / failed / too large / no node."""
    names = [f"{lo}-{hi}" for lo, hi in PROMPT_BUCKETS] + [f"{PROMPT_BUCKETS[-1][1]}+"]
    rows = []
    for name in names:
        c = out.by_bucket.get(name)
        if not c:
            continue
        total = sum(c.values())
        rows.append({"prompt tokens": name, "requests": str(total), **{k: f"{c[k] / total:.1%}" for k in OUTCOMES}})
    return table(rows)
