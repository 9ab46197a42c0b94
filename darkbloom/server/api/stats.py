"""``GET /v1/stats``: public network statistics, cached so load cannot make them expensive.

Active nodes, the models they serve, tokens served in the last 24 hours and
the median time to first token over the same window. The figures come from
the coordinator's memory (the live fleet and the metrics' rolling window), so
they restart from zero when the coordinator does.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.server.fleet import Fleet
from darkbloom.server.metrics import CoordinatorMetrics

CACHE_S = 5.0


def compute_stats(fleet: Fleet, metrics: CoordinatorMetrics) -> dict[str, object]:
    """The public stats body, computed now."""
    now = metrics.clock()
    median = metrics.window.median_ttft(now)
    return {
        "object": "network.stats",
        "active_nodes": len(fleet.registry.nodes),
        "models": fleet.registry.models(),
        "tokens_served_24h": metrics.window.tokens(now),
        "median_ttft_ms": None if median is None else round(median * 1000, 1),
        "generated_at": int(now),
    }


async def stats(request: Request) -> Response:
    state = request.app.state
    cached: tuple[float, dict[str, object]] | None = getattr(state, "stats_cache", None)
    mono = time.monotonic()
    if cached is None or mono - cached[0] >= CACHE_S:
        cached = (mono, compute_stats(state.fleet, state.metrics))
        state.stats_cache = cached
    return JSONResponse(cached[1], headers={"Cache-Control": f"public, max-age={int(CACHE_S)}"})
