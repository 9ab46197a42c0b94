"""Relay overhead: direct-to-stand-in vs through the coordinator, and disconnect -> cancel.

    python -m bench.relay [--streams 1,32,500] [--rate 50] [--tokens 50] [--cancels 200]

Starts a real coordinator (``darkbloom serve``, SQLite, API-key auth and
routing on) pinned to CPU 0 and a stand-in node (``bench.relay_standin``:
the real protocol, fixed-rate tokens, no MLX) on CPU 1, and drives streams
from this process (pinned to CPU 1) with a minimal HTTP/1.1 client, so the
load generator's own cost is small and the same for both paths. The direct
baseline is the stand-in serving the same SSE stream itself on CPU 0. Each
level runs at least 3 rounds (and 32 streams), direct and coordinator
alternating which goes first.
Prints markdown tables: TTFT and inter-token gap p50/p99 per path, what the
coordinator adds, CPU time per chunk of the direct server and of the
coordinator (at one stream both are mostly the cost of waking up for each
chunk), TTFT and CPU per chunk as ratios to the direct server (comparable
across machines, where the absolute figures are not), errors; then the time from
a client closing its socket to the node receiving ``cancel`` (p50/p99).
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
from pathlib import Path

from darkbloom.sim.report import percentile, table
from darkbloom.testing import create_key, darkbloom_cmd, free_port, wait_http

BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10_000}


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if os.path.exists("/usr/bin/taskset") and os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(port: int, key: str, *, close_after_first: bool = False) -> dict:  # type: ignore[type-arg]
    """POST a streaming chat request; time the first content event and the gaps between events."""
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    out: dict = {"status": int(status_line.split()[1]), "times": [], "error": None, "request_id": headers.get("x-request-id")}  # type: ignore[type-arg]
    buf = b""
    try:
        while True:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            buf += await reader.readexactly(size + 2)
            buf = buf[:-2] if buf.endswith(b"\r\n") else buf
            now = time.perf_counter()
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                payload = event.removeprefix(b"data: ")
                if payload == b"[DONE]":
                    continue
                if b'"error"' in payload[:12]:
                    out["error"] = payload.decode()
                    continue
                if b'"content"' in payload:
                    out["times"].append(now - start)
                    if close_after_first:
                        out["closed_at"] = time.monotonic()
                        writer.transport.abort()
                        return out
    finally:
        writer.close()
    return out


async def run_level(port: int, key: str, streams: int, rounds: int = 1) -> list[dict]:  # type: ignore[type-arg]
    """``rounds`` rounds of ``streams`` concurrent streams (more rounds: enough samples at low concurrency)."""
    out: list[dict] = []  # type: ignore[type-arg]
    for _ in range(rounds):
        out += await asyncio.gather(*(one_stream(port, key) for _ in range(streams)))
    return out


def summarize(path: str, streams: int, results: list[dict]) -> dict[str, float]:  # type: ignore[type-arg]
    ttft = sorted(r["times"][0] * 1000 for r in results if r["times"])
    gaps = sorted((b - a) * 1000 for r in results for a, b in zip(r["times"], r["times"][1:]))
    errors = sum(1 for r in results if r["status"] != 200 or r["error"] or not r["times"])
    return {
        "ttft50": percentile(ttft, 50), "ttft99": percentile(ttft, 99),
        "gap50": percentile(gaps, 50), "gap99": percentile(gaps, 99),
        "chunks": sum(len(r["times"]) for r in results), "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,32,500")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--cancels", type=int, default=200)
    args = ap.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    if _pin(1):
        os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    port, direct_port = free_port(), free_port()
    db = f"sqlite:///{tmp / 'c.db'}"
    py = sys.executable
    # Rate limiting stays on (its cost is part of the path) but must not refuse the benchmark's own traffic.
    unlimited = {**os.environ, **{f"DARKBLOOM_{k}": "1000000000" for k in ("RATE_LIMIT_RPS", "RATE_LIMIT_BURST", "INPUT_TOKENS_PER_MIN", "OUTPUT_TOKENS_PER_MIN")}}
    coord = subprocess.Popen([*_pin(0), py, "-m", "darkbloom.cli.main", "serve", "--port", str(port), "--db", db, "--home", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=unlimited)
    std = ["--rate", str(args.rate), "--tokens", str(args.tokens)]
    direct = subprocess.Popen([*_pin(0), py, "-m", "bench.relay_standin", "http", str(direct_port), *std], stdout=subprocess.DEVNULL)
    node = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        wait_http(f"http://127.0.0.1:{direct_port}/")
        # A priced model and a funded key: every request reserves money, holds it in the ledger and settles.
        subprocess.run(darkbloom_cmd("admin", "price", "set", "bench", "--input", "0.5", "--output", "1.5", "--db", db, "--home", str(tmp)),
                       check=True, capture_output=True, timeout=60)
        key = create_key(db, tmp, credit_usd="1000")
        node = subprocess.Popen([*_pin(1), py, "-m", "bench.relay_standin", "node", f"http://127.0.0.1:{port}", *std], stdout=subprocess.PIPE, text=True)
        assert node.stdout is not None and node.stdout.readline().strip() == "registered"
        asyncio.run(run_level(port, key, 4))  # warm up both paths
        asyncio.run(run_level(direct_port, key, 4))
        rows = []
        for n in levels:
            # At least 3 rounds and 320 streams per level (32 rounds at most), the paths alternating which
            # goes first: the machine's own swings then fall on both instead of on whichever ran in a bad second.
            rounds = min(32, max(3, -(-320 // n)))
            d_res: list[dict] = []  # type: ignore[type-arg]
            c_res: list[dict] = []  # type: ignore[type-arg]
            dcpu = cpu = 0.0
            for r in range(rounds):
                for which in (("direct", "via") if r % 2 == 0 else ("via", "direct")):
                    pid, target, res = (direct.pid, direct_port, d_res) if which == "direct" else (coord.pid, port, c_res)
                    t0 = _cpu_seconds(pid)
                    res += asyncio.run(run_level(target, key, n))
                    spent = _cpu_seconds(pid) - t0
                    if which == "direct":
                        dcpu += spent
                    else:
                        cpu += spent
            d = summarize("direct", n, d_res)
            c = summarize("coordinator", n, c_res)
            rows.append({
                "streams": str(n),
                "TTFT p50 direct / via ms": f"{d['ttft50']:.2f} / {c['ttft50']:.2f}",
                "added TTFT p50 ms": f"{c['ttft50'] - d['ttft50']:.2f}",
                "added TTFT p99 ms": f"{c['ttft99'] - d['ttft99']:.2f}",
                "gap p50 direct / via ms": f"{d['gap50']:.2f} / {c['gap50']:.2f}",
                "gap p99 direct / via ms": f"{d['gap99']:.2f} / {c['gap99']:.2f}",
                "CPU µs/chunk direct / coordinator": f"{dcpu / max(1, d['chunks']) * 1e6:.0f} / {cpu / max(1, c['chunks']) * 1e6:.0f}",
                # The same figures as ratios, measured in this one run: they travel between machines better.
                "TTFT p50 via/direct": f"{c['ttft50'] / d['ttft50']:.2f}x" if d["ttft50"] else "-",
                "CPU/chunk coordinator/direct": f"{(cpu / max(1, c['chunks'])) / (dcpu / max(1, d['chunks'])):.2f}x" if dcpu else "-",
                "errors direct / via": f"{d['errors']} / {c['errors']}",
            })
        print(f"### Relay overhead: {args.tokens} tokens per stream at {args.rate:.0f} tokens/s\n")
        print(table(rows))
        print()
        print(cancel_latency(port, key, node, args.cancels))
    finally:
        for p in (node, direct, coord):
            if p is not None:
                p.terminate()
                p.wait(10)


def cancel_latency(port: int, key: str, node: subprocess.Popen, trials: int) -> str:  # type: ignore[type-arg]
    """Close the client socket after the first chunk; the node's clock says when ``cancel`` arrived."""

    async def go() -> list[dict]:  # type: ignore[type-arg]
        sem = asyncio.Semaphore(10)

        async def one() -> dict:  # type: ignore[type-arg]
            async with sem:
                return await one_stream(port, key, close_after_first=True)

        return await asyncio.gather(*(one() for _ in range(trials)))

    closed = {r["request_id"]: r["closed_at"] for r in asyncio.run(go()) if "closed_at" in r}
    seen: dict[str, float] = {}
    assert node.stdout is not None
    deadline = time.monotonic() + 10
    while len(seen) < len(closed) and time.monotonic() < deadline:
        parts = node.stdout.readline().split()
        if len(parts) == 3 and parts[0] == "cancel":
            seen[parts[1]] = float(parts[2])
    lat = sorted((seen[r] - t) * 1000 for r, t in closed.items() if r in seen)
    return f"### Client disconnect -> node cancel ({len(lat)} of {trials} streams)\n\n" + table([{
        "p50 ms": f"{percentile(lat, 50):.2f}", "p99 ms": f"{percentile(lat, 99):.2f}", "max ms": f"{lat[-1] if lat else float('nan'):.2f}",
        "missing cancels": str(len(closed) - len(lat)),
    }])


if __name__ == "__main__":
    main()
