"""Darkbloom node (behind ``darkbloom serve``) vs ``mlx_lm.server``: one model, one machine, one run.

    python bench/node_vs_mlx_lm.py [--model DIR] [--levels 1,4,8,16] [--max-tokens 64] [--rounds 3]

Serves the same model directory with both servers (each idles while the
other is measured), streams chat completions at each concurrency from
127.0.0.1 only, repeating every level for several rounds and alternating
which server goes first, so load from elsewhere on the machine falls on both, and prints a markdown table of aggregate
decode tokens/s (every completion token of the level over its wall time) and
time to first token p50/p95, with the ratio ours / mlx_lm.server.

The model defaults to the SmolLM2-135M demo model under the darkbloom home
(``darkbloom up`` builds it), else a tiny random model built here. Both
servers get the same BLAS: ours preloads OpenBLAS itself; mlx_lm.server gets
it through LD_PRELOAD.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from darkbloom.node.blas import find_openblas  # noqa: E402
from darkbloom.testing import Proc, create_key, free_port, start, wait_http, wait_model  # noqa: E402

# Child processes must run this checkout's darkbloom, whatever the working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
CHILD_ENV = {"DARKBLOOM_LOG_LEVEL": "WARNING"}

from darkbloom.node.benchmark import TOPICS  # noqa: E402  (one prompt set for both benchmarks)


@dataclass
class Level:
    concurrency: int
    tokens: int
    wall_s: float
    ttfts: list[float]
    errors: int

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def ttft(self, q: float) -> float:
        if not self.ttfts:
            return float("nan")
        s = sorted(self.ttfts)
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] * 1000


async def _stream(client: httpx.AsyncClient, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (#{i})."}
        ],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = 0.0
    chunks = usage = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"].get("completion_tokens", 0)
            for choice in data.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if not ttft:
                        ttft = time.perf_counter() - t0
    return ttft, usage or chunks


@dataclass(frozen=True)
class Target:
    """One server under test: where it listens, the key, and the model name it expects."""

    name: str
    base: str
    key: str
    model: str


async def _level(client: httpx.AsyncClient, target: Target, c: int, max_tokens: int) -> Level:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *[_stream(client, target.model, i, max_tokens) for i in range(c)], return_exceptions=True
    )
    wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    for r in results:
        if isinstance(r, BaseException):
            print(f"  {target.name} c={c}: {type(r).__name__}: {r}", file=sys.stderr)
    return Level(c, sum(t for _, t in ok), wall, [f for f, _ in ok], len(results) - len(ok))


async def measure(targets: list[Target], levels: list[int], max_tokens: int, rounds: int) -> dict[str, list[Level]]:
    """Each round runs every level on every server, alternating which goes first.

    Other load on the machine then falls on both servers alike instead of on
    whichever happened to run during a busy minute.
    """
    totals = {t.name: {c: Level(c, 0, 0.0, [], 0) for c in levels} for t in targets}
    clients = {
        t.name: httpx.AsyncClient(
            base_url=t.base,
            headers={"Authorization": f"Bearer {t.key}"},
            timeout=600,
            limits=httpx.Limits(max_connections=64),
        )
        for t in targets
    }
    try:
        for t in targets:
            await _stream(clients[t.name], t.model, 0, 4)  # warm up
        for rnd in range(rounds):
            for c in levels:
                order = targets if (rnd + c) % 2 == 0 else list(reversed(targets))
                for t in order:
                    lv = await _level(clients[t.name], t, c, max_tokens)
                    acc = totals[t.name][c]
                    acc.tokens += lv.tokens
                    acc.wall_s += lv.wall_s
                    acc.ttfts += lv.ttfts
                    acc.errors += lv.errors
                    print(f"  round {rnd + 1} {t.name} c={c}: {lv.tps:.1f} tok/s", file=sys.stderr)
    finally:
        for client in clients.values():
            await client.aclose()
    return {name: [by_c[c] for c in levels] for name, by_c in totals.items()}


def start_mlx_lm(model_dir: Path, max_concurrency: int, logs: Path) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    env = {**os.environ}
    if (blas := find_openblas()) is not None:
        env["LD_PRELOAD"] = blas  # the same BLAS our node preloads itself
    cmd = [
        sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--host", "127.0.0.1",
        "--port", str(port), "--decode-concurrency", str(max_concurrency), "--log-level", "WARNING",
    ]  # fmt: skip
    with open(logs / "mlx_lm.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=120)
    return proc, Target("mlx_lm.server", f"http://127.0.0.1:{port}", "none", str(model_dir))


def start_darkbloom(model_dir: Path, max_concurrency: int, logs: Path) -> tuple[list[Proc], Target]:
    port = free_port()
    db = f"sqlite:///{logs / 'coord.db'}"
    base = f"http://127.0.0.1:{port}"
    coord = start(
        ["serve", "--port", str(port), "--db", db, "--home", str(logs / "coord")], logs / "coord.log", env=CHILD_ENV
    )
    procs = [coord]
    wait_http(f"{base}/health", proc=coord)
    key = create_key(db, logs / "coord")
    node_args = ["node", "--coordinator", base, "--model", str(model_dir), "--home", str(logs / "node")]
    procs.append(start([*node_args, "--max-concurrency", str(max_concurrency)], logs / "node.log", env=CHILD_ENV))
    model_id = json.loads((model_dir / "config.json").read_text()).get("darkbloom_model_id") or model_dir.name
    wait_model(base, key, model_id, timeout=180)
    return procs, Target("darkbloom", base, key, model_id)


def default_model(tmp: Path) -> Path:
    from darkbloom.node.models.demo import DEMO_MODEL_NAME
    from darkbloom.server.settings import darkbloom_home

    demo = darkbloom_home() / "models" / DEMO_MODEL_NAME
    if (demo / "config.json").is_file():
        return demo
    from darkbloom.node.models.tiny import build_tiny_model

    print("no SmolLM2 demo model (run `darkbloom up` once to fetch it); using a tiny random model", file=sys.stderr)
    return build_tiny_model(tmp / "tiny", name="tiny-bench")


def table(model: Path, ours: list[Level], theirs: list[Level]) -> str:
    rows = [
        f"Model: `{model.name}`; streams of up to N tokens each, greedy; 127.0.0.1; R rounds per level, servers alternating.",
        "",
        "| concurrency | darkbloom tok/s | mlx_lm.server tok/s | ratio | darkbloom TTFT p50 / p95 ms | mlx_lm.server TTFT p50 / p95 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(ours, theirs):
        ratio = f"{a.tps / b.tps:.2f}" if b.tps else "n/a"
        err = lambda lv: f" ({lv.errors} failed)" if lv.errors else ""  # noqa: E731
        rows.append(
            f"| {a.concurrency} | {a.tps:.1f}{err(a)} | {b.tps:.1f}{err(b)} | {ratio} | "
            f"{a.ttft(0.5):.0f} / {a.ttft(0.95):.0f} | {b.ttft(0.5):.0f} / {b.ttft(0.95):.0f} |"
        )
    if ours and ours[0].tps:
        by_c = {lv.concurrency: lv.tps for lv in ours}
        if 8 in by_c:
            rows.append("")
            rows.append(f"darkbloom aggregate at concurrency 8 / concurrency 1: {by_c[8] / ours[0].tps:.2f}x")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="MLX model directory (default: the SmolLM2 demo model, else tiny)")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="repeat every level this many times, alternating servers")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="darkbloom-bench-") as tmp:
        logs = Path(tmp)
        model = args.model or default_model(logs)
        print(f"serving {model} with mlx_lm.server and darkbloom ...", file=sys.stderr)
        mlx_proc: subprocess.Popen[bytes] | None = None
        ours_procs: list[Proc] = []
        try:
            mlx_proc, theirs_t = start_mlx_lm(model, max(levels), logs)
            ours_procs, ours_t = start_darkbloom(model, max(levels), logs)
            res = asyncio.run(measure([ours_t, theirs_t], levels, args.max_tokens, args.rounds))
        finally:
            for p in ours_procs:
                p.stop()
            if mlx_proc is not None:
                mlx_proc.terminate()
                mlx_proc.wait(30)
        ours, theirs = res["darkbloom"], res["mlx_lm.server"]
    print(
        table(model, ours, theirs)
        .replace("up to N", f"up to {args.max_tokens}")
        .replace("R rounds", f"{args.rounds} rounds")
    )


if __name__ == "__main__":
    main()
