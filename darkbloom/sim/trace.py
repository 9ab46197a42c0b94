"""Arrivals for the simulator: read from a trace file, or generated.

A trace is CSV (header ``arrival_s,model,prompt_tokens,output_tokens``, an
optional ``max_tokens`` column) or JSON lines with the same keys. The
synthetic generator draws Poisson arrivals, a Zipf choice of model, and
heavy-tailed (log-normal) prompt and output lengths.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

PROMPT_BUCKETS = ((64, 500), (500, 750), (750, 1000), (1000, 2000), (2000, 4000), (4000, 8000))
"""The original simulator's prompt-size buckets (tokens): where does service fall off a cliff?"""


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    model: str
    prompt_tokens: int
    output_tokens: int
    max_tokens: int


def bucket(prompt_tokens: int) -> str:
    for low, high in PROMPT_BUCKETS:
        if prompt_tokens < high:
            return f"{low}-{high}"
    return f"{PROMPT_BUCKETS[-1][1]}+"


def load_trace(path: Path) -> list[Arrival]:
    """Read a CSV or JSON-lines trace, sorted by arrival time.

    Raises:
        ValueError: a row lacks a field or has a non-numeric one (the message names the line).
    """
    text = path.read_text()
    rows: list[dict[str, str]]
    if path.suffix in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    out = []
    for i, row in enumerate(rows, start=2 if not text.lstrip().startswith("{") else 1):
        try:
            output = int(row["output_tokens"])
            out.append(
                Arrival(
                    at=float(row["arrival_s"]),
                    model=str(row["model"]),
                    prompt_tokens=int(row["prompt_tokens"]),
                    output_tokens=output,
                    max_tokens=int(row.get("max_tokens") or output),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{i}: bad trace row ({exc})") from None
    out.sort(key=lambda a: a.at)
    return out


def synthetic(n: int, rate_per_s: float, models: list[str], seed: int = 1) -> list[Arrival]:
    """``n`` Poisson arrivals at ``rate_per_s``; models Zipf-popular; lengths log-normal, capped."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(models))]
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        prompt = int(min(8000, max(16, rng.lognormvariate(math.log(600), 1.0))))
        output = int(min(4000, max(1, rng.lognormvariate(math.log(180), 0.9))))
        max_tokens = max(output, int(output * rng.uniform(1.0, 2.0)))
        out.append(Arrival(t, rng.choices(models, weights)[0], prompt, output, max_tokens))
    return out
