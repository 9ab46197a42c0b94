"""``/metrics`` parses as Prometheus text and moves when requests are served; ``/v1/stats`` follows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from darkbloom.protocol import Chunk, Complete, ModelInfo, Register, Usage, decode, encode
from darkbloom.protocol.openai import RequestError
from darkbloom.server.app import create_app
from darkbloom.server.auth.keys import create_key_in
from darkbloom.server.metrics import TrafficWindow
from darkbloom.server.settings import Settings
from tests.server.conftest import Coordinator, register
from tests.server.test_provider_socket import GOOD, _stream_in_thread


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}, through prometheus-client's own parser."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def serve_one(coordinator: Coordinator, ws, pieces: list[str], usage: Usage) -> tuple[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    t, out = _stream_in_thread(coordinator, GOOD)
    req = decode(ws.receive_bytes())
    for i, piece in enumerate(pieces):
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=i, text=piece)))
    ws.send_bytes(encode(Complete(request_id=req.request_id, usage=usage)))
    t.join(10)
    return req.request_id, out


def test_counters_move_when_a_request_is_served(coordinator: Coordinator) -> None:
    client = coordinator.client
    before = scrape(client)
    assert value(before, "darkbloom_nodes_connected", trust_level="none") == 0
    with client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        during = scrape(client)
        assert value(during, "darkbloom_nodes_connected", trust_level="none") == 1
        assert value(during, "darkbloom_model_nodes", model="m1") == 1
        assert value(during, "darkbloom_queue_depth", model="m1") == 0
        _, out = serve_one(coordinator, ws, ["Hel", "lo", " there"], Usage(prompt_tokens=5, completion_tokens=3))
        assert out["status"] == 200
        after = scrape(client)
    route = {"route": "chat.completions", "model": "m1"}
    assert value(after, "darkbloom_requests_total", **route, status="completed") == 1
    assert value(after, "darkbloom_tokens_total", model="m1", kind="prompt") == 5
    assert value(after, "darkbloom_tokens_total", model="m1", kind="completion") == 3
    assert value(after, "darkbloom_ttft_seconds_count", model="m1") == 1
    assert value(after, "darkbloom_queue_wait_seconds_count", model="m1") == 1
    assert value(after, "darkbloom_inter_token_seconds_count", model="m1") == 2  # three chunks, two gaps
    assert value(after, "darkbloom_relay_bytes_total") == len("Hello there")
    assert value(after, "darkbloom_http_requests_total", route="/v1/chat/completions", method="POST", code="200") == 1
    assert value(after, "darkbloom_requests_in_flight") == 0
    assert value(after, "darkbloom_build_info", version=__import__("darkbloom").__version__) == 1


def test_requests_asking_for_json_or_logprobs_are_counted_by_feature(coordinator: Coordinator) -> None:
    client = coordinator.client
    body = {**GOOD, "messages": [{"role": "user", "content": "answer in json"}], "response_format": {"type": "json_object"}, "logprobs": True}
    with client.websocket_connect("/v1/provider/ws") as ws:
        ws.send_bytes(encode(Register(node_id="node-a", models=(ModelInfo(id="m1", supports_json=True, supports_logprobs=True),))))  # type: ignore[arg-type]
        decode(ws.receive_bytes())
        serve_one(coordinator, ws, ["{}"], Usage(prompt_tokens=5, completion_tokens=1))  # plain: no feature
        t, out = _stream_in_thread(coordinator, body)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=5, completion_tokens=1))))
        t.join(10)
    after = scrape(client)
    assert out["status"] == 200
    assert value(after, "darkbloom_request_features_total", route="chat.completions", feature="json") == 1
    assert value(after, "darkbloom_request_features_total", route="chat.completions", feature="logprobs") == 1
    assert value(after, "darkbloom_request_features_total", route="chat.completions", feature="tools") == 0


def test_unknown_model_names_do_not_become_label_values(coordinator: Coordinator) -> None:
    for i in range(3):
        resp = coordinator.client.post(
            "/v1/chat/completions", json={**GOOD, "model": f"junk-{i}"}, headers=coordinator.auth
        )
        assert resp.status_code == 404
    samples = scrape(coordinator.client)
    assert value(samples, "darkbloom_requests_total", route="chat.completions", model="unknown", status="failed") == 3
    assert not any(dict(labels).get("model", "").startswith("junk") for _, labels in samples)


class RateLimiter:
    """A hook refusing every request with 429, as a rate limit would."""

    async def admit(self, job) -> None:  # type: ignore[no-untyped-def]
        raise RequestError(429, "slow down", type="rate_limit_error", code="rate_limited", headers={"Retry-After": "1"})

    async def settle(self, job, outcome, usage, node_id) -> None:  # type: ignore[no-untyped-def]
        return None


def test_429s_are_counted_and_carry_the_request_id(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    key, _ = asyncio.run(create_key_in(settings.db_url))
    with TestClient(create_app(settings, hooks=[RateLimiter()])) as client:
        resp = client.post("/v1/chat/completions", json=GOOD, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 429
        assert resp.headers["x-request-id"].startswith("chatcmpl-")
        samples = scrape(client)
    assert value(samples, "darkbloom_rate_limited_total", route="/v1/chat/completions") == 1
    assert value(samples, "darkbloom_requests_total", route="chat.completions", model="unknown", status="failed") == 1


def test_every_response_has_a_request_id(coordinator: Coordinator) -> None:
    ids = {coordinator.client.get(path).headers["x-request-id"] for path in ("/health", "/health", "/v1/nope")}
    assert len(ids) == 3 and all(i.startswith("req-") for i in ids)


def test_other_parts_of_the_coordinator_can_count_events(coordinator: Coordinator) -> None:
    metrics = coordinator.client.app.state.metrics  # type: ignore[attr-defined]
    metrics.attestation_failed("bad_signature")
    metrics.ledger_posted("charge", 3)
    samples = scrape(coordinator.client)
    assert value(samples, "darkbloom_attestation_failures_total", reason="bad_signature") == 1
    assert value(samples, "darkbloom_ledger_postings_total", kind="charge") == 3


def test_two_apps_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    apps = [create_app(Settings(home=tmp_path / n, db_url=f"sqlite:///{tmp_path / n}.db")) for n in ("a", "b")]
    apps[0].state.metrics.ledger_posted("hold")
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        assert value(scrape(a), "darkbloom_ledger_postings_total", kind="hold") == 1
        assert value(scrape(b), "darkbloom_ledger_postings_total", kind="hold") == 0


def test_stats_report_nodes_models_tokens_and_median_ttft(coordinator: Coordinator) -> None:
    client = coordinator.client
    empty = client.get("/v1/stats").json()
    assert empty["active_nodes"] == 0 and empty["tokens_served_24h"] == 0 and empty["median_ttft_ms"] is None
    with client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        serve_one(coordinator, ws, ["a", "b"], Usage(prompt_tokens=7, completion_tokens=2))
        cached = client.get("/v1/stats").json()
        assert cached == empty, "stats are served from a cache for a few seconds"
        client.app.state.stats_cache = None  # type: ignore[attr-defined]
        stats = client.get("/v1/stats")
    body = stats.json()
    assert stats.headers["cache-control"].startswith("public")
    assert body["active_nodes"] == 1 and body["models"] == ["m1"]
    assert body["tokens_served_24h"] == 9
    assert body["median_ttft_ms"] is not None and body["median_ttft_ms"] >= 0


def test_metrics_token_when_configured(coordinator: Coordinator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DARKBLOOM_METRICS_TOKEN", "s3cret-scrape")
    assert coordinator.client.get("/metrics").status_code == 401
    assert coordinator.client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"}).status_code == 200


def test_traffic_window_forgets_after_a_day() -> None:
    w = TrafficWindow()
    w.add_tokens(100, now=1_000.0)
    w.add_ttft(0.5, now=1_000.0)
    w.add_tokens(10, now=50_000.0)
    for s in (0.1, 0.2, 0.3):
        w.add_ttft(s, now=50_000.0)
    assert w.tokens(now=50_000.0) == 110
    assert w.median_ttft(now=50_000.0) == 0.25
    assert w.tokens(now=1_000.0 + 86_400 + 61) == 10
    assert w.median_ttft(now=1_000.0 + 86_400 + 61) == 0.2
    assert w.tokens(now=50_000.0 + 86_400 + 61) == 0 and w.median_ttft(now=50_000.0 + 86_400 + 61) is None


def test_loop_histogram_buckets_are_cumulative_and_inclusive() -> None:
    from darkbloom.server.metrics import LoopHistogram

    h = LoopHistogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe("m", v)
    fam = h.family("x_seconds", "x", "model")
    got = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert got[("x_seconds_bucket", "0.1")] == 2  # le is inclusive: 0.1 counts in the 0.1 bucket
    assert got[("x_seconds_bucket", "1.0")] == 3 and got[("x_seconds_bucket", "+Inf")] == 4
    assert got[("x_seconds_count", None)] == 4 and abs(got[("x_seconds_sum", None)] - 3.65) < 1e-9
    assert h.count("m") == 4 and h.count("other") == 0
