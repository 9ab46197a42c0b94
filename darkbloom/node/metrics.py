"""The node's own ``/metrics`` on a local port: batch size, tokens/s, KV use, memory.

Everything is read at scrape time from the engines' capacity snapshots (the
same numbers the node reports to its coordinator), so serving pays nothing
for it. The exporter is prometheus-client's HTTP server on its own thread,
bound to 127.0.0.1 by default: a node's numbers are for its operator.

``$DARKBLOOM_NODE_METRICS_PORT`` picks the port (default 8425; ``0`` for any
free port; ``off`` to disable); ``$DARKBLOOM_NODE_METRICS_ADDR`` the address.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from darkbloom import __version__

log = logging.getLogger(__name__)

DEFAULT_PORT = 8425  # 8420 coordinator, 8421 sealing proxy


class NodeCollector(Collector):
    """Per-model gauges from each engine's ``capacity()``, plus process and MLX memory.

    Args:
        engines: Model id -> engine (anything with ``capacity() -> SlotCapacity``).
        connected: Whether the node is registered with a coordinator right now.
        active: How many requests the node is serving right now.
    """

    def __init__(
        self,
        engines: Mapping[str, Any],
        connected: Callable[[], bool] = lambda: False,
        active: Callable[[], int] = lambda: 0,
    ) -> None:
        self.engines = engines
        self.connected = connected
        self.active = active

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        fams = {
            "batch": GaugeMetricFamily(
                "darkbloom_node_batch_size", "Sequences decoding together in the running batch.", labels=labels
            ),
            "waiting": GaugeMetricFamily("darkbloom_node_waiting", "Requests waiting for a batch slot.", labels=labels),
            "max": GaugeMetricFamily(
                "darkbloom_node_max_concurrency", "Most sequences the slot decodes at once.", labels=labels
            ),
            "decode": GaugeMetricFamily(
                "darkbloom_node_decode_tokens_per_second", "Observed decode throughput (EWMA).", labels=labels
            ),
            "prefill": GaugeMetricFamily(
                "darkbloom_node_prefill_tokens_per_second", "Observed prefill throughput (EWMA).", labels=labels
            ),
            "kv_used": GaugeMetricFamily(
                "darkbloom_node_kv_tokens_used", "Tokens held in the KV cache by running sequences.", labels=labels
            ),
            "kv_max": GaugeMetricFamily(
                "darkbloom_node_kv_tokens_max", "KV cache token budget of the slot.", labels=labels
            ),
            "kv_bytes": GaugeMetricFamily(
                "darkbloom_node_kv_bytes_used", "Bytes of KV cache in use (tokens x bytes per token).", labels=labels
            ),
        }
        for model, engine in list(self.engines.items()):
            try:
                cap = engine.capacity()
            except Exception:  # a scrape must never take the node down
                continue
            fams["batch"].add_metric([model], cap.num_running)
            fams["waiting"].add_metric([model], cap.num_waiting)
            fams["max"].add_metric([model], cap.max_concurrency)
            fams["decode"].add_metric([model], cap.observed_decode_tps)
            fams["prefill"].add_metric([model], cap.observed_prefill_tps)
            fams["kv_used"].add_metric([model], cap.active_token_budget_used)
            fams["kv_max"].add_metric([model], cap.active_token_budget_max)
            fams["kv_bytes"].add_metric([model], cap.active_token_budget_used * cap.kv_bytes_per_token)
        yield from fams.values()
        yield GaugeMetricFamily(
            "darkbloom_node_connected", "1 while registered with a coordinator.", value=1 if self.connected() else 0
        )
        yield GaugeMetricFamily("darkbloom_node_active_requests", "Requests being served now.", value=self.active())
        info = GaugeMetricFamily("darkbloom_node_build_info", "The node's darkbloom version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from _memory()


def _memory() -> Iterator[Metric]:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    yield GaugeMetricFamily(
        "darkbloom_node_peak_rss_bytes", "Peak resident memory of the node process.", value=peak_rss
    )
    mx = sys.modules.get("mlx.core")  # only if the engine loaded MLX; never import it just for a scrape
    active = getattr(mx, "get_active_memory", None)
    peak = getattr(mx, "get_peak_memory", None)
    if callable(active) and callable(peak):
        try:
            yield GaugeMetricFamily(
                "darkbloom_node_mlx_active_memory_bytes", "Memory MLX holds for arrays now.", value=float(active())
            )
            yield GaugeMetricFamily(
                "darkbloom_node_mlx_peak_memory_bytes", "Most memory MLX has held.", value=float(peak())
            )
        except Exception:
            return


@dataclass
class NodeMetricsServer:
    """A running exporter; ``close`` stops it."""

    url: str
    _server: Any
    _thread: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_node_metrics(
    collector: NodeCollector, port: int | None = None, addr: str | None = None
) -> NodeMetricsServer | None:
    """Serve ``collector`` at ``http://addr:port/metrics``; ``None`` when disabled or the port is taken.

    A busy port is not fatal: the node serves models without its exporter and says so.
    """
    if port is None:
        raw = os.environ.get("DARKBLOOM_NODE_METRICS_PORT", str(DEFAULT_PORT)).strip().lower()
        if raw in ("off", "none", "no", ""):
            return None
        try:
            port = int(raw)
        except ValueError:
            log.warning("DARKBLOOM_NODE_METRICS_PORT=%r is not a port; node metrics disabled", raw)
            return None
    addr = addr or os.environ.get("DARKBLOOM_NODE_METRICS_ADDR", "127.0.0.1")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning(
            "node metrics not served: cannot listen on %s:%s (%s); set DARKBLOOM_NODE_METRICS_PORT", addr, port, exc
        )
        return None
    url = f"http://{addr}:{server.server_port}/metrics"
    log.info("node metrics at %s", url)
    return NodeMetricsServer(url, server, thread)


def session_collector(session: Any) -> NodeCollector:
    """A collector over a ``NodeSession``'s engines, connection and active requests."""
    return NodeCollector(
        session.engines, connected=session.connected.is_set, active=lambda: len(getattr(session, "_tasks", ()))
    )
