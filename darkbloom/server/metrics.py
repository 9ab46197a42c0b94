"""Coordinator metrics in Prometheus form, and the rolling window behind ``/v1/stats``.

``CoordinatorMetrics`` is three things at once:

- a ``RequestHook`` (and ``StreamTap``) on the gateway: it counts every
  request's terminal state, tokens, time to first token, gaps between
  chunks, queue wait and relayed bytes as they happen;
- a collector that reads the live fleet at scrape time (connected nodes by
  trust level, requests in flight, queue depth per model, writer lane depths),
  so nothing is double-booked and a scrape costs one pass over the fleet;
- a small API other parts of the coordinator call when something happens
  outside the request path: ``attestation_failed`` and ``ledger_posted``.

Each app has its own ``CollectorRegistry``, so two coordinators in one process
(tests) never share or collide on metrics.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from darkbloom import __version__
from darkbloom.protocol import Chunk, Complete, Frame, Usage

if TYPE_CHECKING:
    from darkbloom.server.fleet import Fleet
    from darkbloom.server.gateway import InferenceJob, Outcome, Timing

log = logging.getLogger("darkbloom.requests")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets for interactive inference: tens of milliseconds to minutes.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
GAP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DAY_S = 86_400.0


class TrafficWindow:
    """Tokens served and first-token latencies over the last day. Pure: ``now`` is passed in.

    Tokens go into one-minute buckets (at most 1,440 kept); TTFT samples are
    kept individually up to ``max_samples`` (oldest dropped first), enough for
    a stable median without unbounded memory.
    """

    def __init__(self, span_s: float = DAY_S, max_samples: int = 10_000) -> None:
        self.span_s = span_s
        self._tokens: deque[list[float]] = deque()  # [minute start, tokens]
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def _trim(self, now: float) -> None:
        cutoff = now - self.span_s
        while self._tokens and self._tokens[0][0] + 60 <= cutoff:
            self._tokens.popleft()
        while self._ttft and self._ttft[0][0] < cutoff:
            self._ttft.popleft()

    def add_tokens(self, count: int, now: float) -> None:
        minute = now - now % 60
        if self._tokens and self._tokens[-1][0] == minute:
            self._tokens[-1][1] += count
        else:
            self._tokens.append([minute, count])
        self._trim(now)

    def add_ttft(self, seconds: float, now: float) -> None:
        self._ttft.append((now, seconds))

    def tokens(self, now: float) -> int:
        """Tokens served in the window ending ``now`` (minute resolution)."""
        self._trim(now)
        return int(sum(b[1] for b in self._tokens))

    def median_ttft(self, now: float) -> float | None:
        """Median time to first token in the window, or ``None`` with no samples."""
        self._trim(now)
        if not self._ttft:
            return None
        values = sorted(s for _, s in self._ttft)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


class LoopHistogram:
    """A histogram for the relay's per-chunk path: plain integers, no lock.

    prometheus-client's ``Histogram`` takes a lock and a label lookup on every
    observation; chunks are observed on the event loop only (one thread), and
    scrapes read from the same loop, so plain counters are safe and several
    times cheaper (``bench/metrics_overhead.py``).
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.series: dict[str, list[float]] = {}  # label -> [count per bucket..., +Inf count, sum]

    def observe(self, label: str, value: float) -> None:
        row = self.series.get(label)
        if row is None:
            row = self.series[label] = [0.0] * (len(self.bounds) + 2)
        row[bisect.bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def count(self, label: str) -> int:
        row = self.series.get(label)
        return int(sum(row[:-1])) if row else 0

    def family(self, name: str, documentation: str, label_name: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, documentation, labels=[label_name])
        for label, row in sorted(self.series.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip((*self.bounds, float("inf")), row[:-1]):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            fam.add_metric([label], buckets, row[-1])
        return fam


class _FleetCollector(Collector):
    """Gauges read from the fleet at scrape time (never double-booked, never stale)."""

    def __init__(self, owner: CoordinatorMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        fleet = self.owner.fleet
        nodes = GaugeMetricFamily(
            "darkbloom_nodes_connected", "Provider nodes connected, by trust level.", labels=["trust_level"]
        )
        serving = GaugeMetricFamily(
            "darkbloom_model_nodes", "Connected nodes able to serve each model.", labels=["model"]
        )
        inflight = GaugeMetricFamily(
            "darkbloom_requests_in_flight", "Requests dispatched to a node and not yet finished."
        )
        queued = GaugeMetricFamily(
            "darkbloom_queue_depth", "Requests waiting in the coordinator queue, by model.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "darkbloom_fleet_waiting",
            "Requests waiting inside nodes (their own capacity reports), by model.",
            labels=["model"],
        )
        lanes = GaugeMetricFamily(
            "darkbloom_writer_lane_depth", "Frames queued on node WebSocket writers, by lane.", labels=["lane"]
        )
        if fleet is not None:
            by_trust: dict[str, int] = {}
            per_model: dict[str, int] = {}
            node_waiting: dict[str, int] = {}
            for node in list(fleet.registry.nodes.values()):
                trust = str(getattr(node, "trust_level", None) or "none")
                by_trust[trust] = by_trust.get(trust, 0) + 1
                for model in node.routable_models():
                    per_model[model] = per_model.get(model, 0) + 1
                for slot in node.capacity.slots if node.capacity is not None else ():
                    node_waiting[slot.model] = node_waiting.get(slot.model, 0) + slot.num_waiting
            for trust, count in sorted(by_trust.items()):
                nodes.add_metric([trust], count)
            for model, count in sorted(per_model.items()):
                serving.add_metric([model], count)
            for model, count in sorted(node_waiting.items()):
                waiting.add_metric([model], count)
            inflight.add_metric([], len(fleet.inflight))
            depths = queue_depths(fleet)
            for model in sorted(set(depths) | fleet.registry.known_models):
                queued.add_metric([model], depths.get(model, 0))
            for lane, depth in sorted(lane_depths(fleet).items()):
                lanes.add_metric([lane], depth)
        yield from (nodes, serving, inflight, queued, waiting, lanes)
        # Per-chunk series: kept as plain numbers on the event loop (see LoopHistogram), exported here.
        relay = CounterMetricFamily(
            "darkbloom_relay_bytes",
            "Chunk payload relayed from nodes to consumers (bytes of base64 when sealed; characters of plain text).",
        )
        relay.add_metric([], self.owner.relay_bytes)
        yield relay
        yield self.owner.inter_token.family(
            "darkbloom_inter_token_seconds", "Gap between consecutive streamed chunks.", "model"
        )


def queue_depths(fleet: Any) -> dict[str, int]:
    """Queued requests per model, from whatever queue the fleet keeps (none: empty).

    Understands ``fleet.queue_depths() -> {model: n}``, or ``fleet.queue``
    offering ``depths()`` or being a mapping of model to a sized collection.
    """
    fn = getattr(fleet, "queue_depths", None)
    queue = getattr(fleet, "queue", None)
    if not callable(fn) and queue is not None:
        fn = getattr(queue, "depths", None)
    try:
        if callable(fn):
            return {str(k): int(v) for k, v in dict(fn()).items()}
        if isinstance(queue, dict):
            return {str(k): len(v) for k, v in queue.items()}
    except Exception:  # a metrics scrape must never fail because of a queue's shape
        return {}
    return {}


def lane_depths(fleet: Any) -> dict[str, int]:
    """Frames queued per writer lane, summed over nodes (links offering ``lane_depths()``)."""
    total: dict[str, int] = {}
    for link in list(getattr(fleet, "links", {}).values()):
        fn = getattr(link, "lane_depths", None)
        if not callable(fn):
            continue
        try:
            for lane, depth in dict(fn()).items():
                total[str(lane)] = total.get(str(lane), 0) + int(depth)
        except Exception:
            continue
    return total


class CoordinatorMetrics:
    """The coordinator's metrics: a request hook, a stream tap, a fleet collector, and a registry.

    Args:
        clock: Wall clock for the ``/v1/stats`` window (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.fleet: Fleet | None = None
        self.window = TrafficWindow()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "darkbloom_requests",
            "Inference requests by API route, model and terminal status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.features = Counter(
            "darkbloom_request_features",
            "Inference requests that asked the node for more than text, by API route and feature "
            "(tools, forced_tool, json, logprobs); a sealed request's are unseen.",
            ["route", "feature"],
            registry=r,
        )
        self.tokens = Counter(
            "darkbloom_tokens",
            "Tokens processed, by model and kind (prompt or completion).",
            ["model", "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "darkbloom_ttft_seconds",
            "Time from request received to first frame from the node.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = LoopHistogram(GAP_BUCKETS)
        self.queue_wait = Histogram(
            "darkbloom_queue_wait_seconds",
            "Time from admission to dispatch to a node.",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.relay_bytes = 0
        self.http = Counter(
            "darkbloom_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_latency = Histogram(
            "darkbloom_http_request_duration_seconds",
            "HTTP request duration, whole response.",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "darkbloom_rate_limited",
            "Requests refused with 429 (rate limit or queue too long), by route.",
            ["route"],
            registry=r,
        )
        self.attestation_failures = Counter(
            "darkbloom_attestation_failures", "Node attestations that failed, by reason.", ["reason"], registry=r
        )
        self.ledger_postings = Counter(
            "darkbloom_ledger_postings", "Ledger entries posted, by kind.", ["kind"], registry=r
        )
        Gauge("darkbloom_build_info", "The coordinator's darkbloom version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        r.register(_FleetCollector(self))

    # ---- API for the rest of the coordinator ---------------------------------

    def attestation_failed(self, reason: str) -> None:
        """Count one failed attestation (bad signature, stale nonce, timeout...)."""
        self.attestation_failures.labels(reason).inc()

    def ledger_posted(self, kind: str, count: int = 1) -> None:
        """Count ledger entries posted (``hold``, ``charge``, ``credit``, ``deposit``, ``payout``...)."""
        self._child(self.ledger_postings, kind).inc(count)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP response (called by the access middleware)."""
        self._child(self.http, route, method, str(status)).inc()
        self._child(self.http_latency, route).observe(seconds)
        if status == 429:
            self._child(self.rate_limited, route).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client's lookup takes a lock and
        builds a key each call, and these run several times per request (label values are bounded)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)

    # ---- gateway hook and tap -------------------------------------------------

    def _model(self, model: str) -> str:
        # Consumers name models freely; only models a node has served become label values.
        fleet = self.fleet
        return model if fleet is not None and model in fleet.registry.known_models else "unknown"

    async def admit(self, job: InferenceJob) -> None:
        return None

    async def settle(self, job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None:
        model = self._model(job.model)
        self._child(self.requests, job.api, model, outcome).inc()
        p = job.params
        for feature, asked in (
            ("tools", p.tools is not None),
            ("forced_tool", p.tool_required),
            ("json", p.response_format is not None),
            ("logprobs", p.top_logprobs is not None),
        ):
            if asked:
                self._child(self.features, job.api, feature).inc()
        fields: dict[str, object] = {
            "request_id": job.request_id,
            "api": job.api,
            "model": model,
            "outcome": outcome,
            "node_id": node_id,
        }
        if usage is not None:
            self._child(self.tokens, model, "prompt").inc(usage.prompt_tokens)
            self._child(self.tokens, model, "completion").inc(usage.completion_tokens)
            self.window.add_tokens(usage.prompt_tokens + usage.completion_tokens, self.clock())
            fields.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        # One line per request: ids and counts only, never content.
        log.info("request settled", extra=fields)

    def first_frame(self, job: InferenceJob, timing: Timing, frame: Frame) -> None:
        if not isinstance(frame, (Chunk, Complete)):
            return
        model = self._model(job.model)
        ttft = timing.first_frame - timing.received
        self._child(self.ttft, model).observe(ttft)
        self.window.add_ttft(ttft, self.clock())
        if timing.dispatched and timing.admitted:
            self._child(self.queue_wait, model).observe(max(0.0, timing.dispatched - timing.admitted))
        if isinstance(frame, Chunk):
            self.relay_bytes += len(frame.text) + len(frame.sealed or "")

    def chunk(self, job: InferenceJob, gap_s: float, nbytes: int) -> None:
        self.inter_token.observe(self._model(job.model), gap_s)
        self.relay_bytes += nbytes
