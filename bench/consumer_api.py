"""Where a consumer request's time goes, from ``X-Timing``, and how fast a client disconnect reaches the node.

Starts a real coordinator and node on the tiny model (a temporary home), sends
``--requests`` streamed chat completions, and prints a markdown table of the
median microseconds per ``X-Timing`` stage, then the time from a client
closing a stream to the node logging the cancel. Run from the repository root:

    python -m bench.consumer_api --requests 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from darkbloom.node.models.tiny import build_tiny_model
from e2e.conftest import run_network


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--disconnects", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="darkbloom-bench-"))
    model = build_tiny_model(tmp / "models" / "tiny-e2e")
    with run_network(tmp / "net", model) as net:
        headers = {"Authorization": f"Bearer {net.key}"}
        body = {
            "model": net.model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 16,
            "stream": True,
        }
        stages: dict[str, list[int]] = {}
        with httpx.Client(base_url=net.base_url, headers=headers, timeout=60) as client:
            for _ in range(args.requests):
                with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    for k, v in json.loads(r.headers["x-timing"]).items():
                        stages.setdefault(k, []).append(v)
                    r.read()
            print(f"| X-Timing stage (streamed chat, {args.requests} requests) | median us |\n|---|---|")
            for k, values in stages.items():
                print(f"| {k} | {statistics.median(values):.0f} |")
            lat = []
            for _ in range(args.disconnects):
                with client.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": 1500}) as r:
                    rid = r.headers["x-request-id"]
                    next(line for line in r.iter_lines() if line.startswith("data: "))
                    t0 = time.perf_counter()
                while f"{rid} cancelled by coordinator" not in net.nodes[0].text():
                    time.sleep(0.002)
                lat.append((time.perf_counter() - t0) * 1000)
                while client.get("/v1/models/capacity").json()["data"][0]["busy_slots"]:
                    time.sleep(0.01)
        print(f"\n| client disconnect -> node logs the cancel ({args.disconnects} runs) | ms |\n|---|---|")
        print(f"| median | {statistics.median(lat):.1f} |\n| max | {max(lat):.1f} |")


if __name__ == "__main__":
    main()
