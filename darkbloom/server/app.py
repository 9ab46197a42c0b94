"""The coordinator's app factory: routes, lifespan, shared state (thin)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from darkbloom.server.access import RequestContextMiddleware
from darkbloom.server.api import accounts, chat, completions, consumer, dashboard, device, messages, models, openapi, provider_ws, responses
from darkbloom.server.api import billing as billing_api
from darkbloom.server.api import metrics as metrics_api, releases as releases_api, stats as stats_api
from darkbloom.server.auth.cache import KeyCache
from darkbloom.server.api import providers
from darkbloom.server.attestation import AttestationService, PrivacyRelay, ReceiptBook, TrustPolicy
from darkbloom.server.auth.admin import admin_key_path, ensure_admin_key
from darkbloom.server.auth.keys import hash_key
from darkbloom.server.billing.hook import billing_hook, coordinator_id, sweep_stale_holds
from darkbloom.server.events import DashboardHook, EventBus
from darkbloom.server.gateway import RequestHook
from darkbloom.server.fleet import Fleet
from darkbloom.server.metrics import CoordinatorMetrics
from darkbloom.server.releases import ReleaseBook
from darkbloom.server.settings import Settings
from darkbloom.server.store import Store, money, open_store

log = logging.getLogger(__name__)


async def _evict_silent_nodes(fleet: Fleet, settings: Settings, events: EventBus | None = None) -> None:
    """Drop nodes that have not sent a heartbeat within the timeout."""
    while True:
        await asyncio.sleep(min(settings.heartbeat_interval_s, settings.node_timeout_s / 3))
        attestation = getattr(fleet, "attestation", None)
        if attestation is not None:
            attestation.refresh()  # fence nodes whose last passed challenge is too old
        for node_id in fleet.registry.expired(fleet.clock(), settings.node_timeout_s):
            log.warning("evicting node %s: silent for over %.0f s", node_id, settings.node_timeout_s)
            await fleet.detach(node_id, "provider timed out")
            if events is not None:
                events.node_event("left", node_id, "timed out")


def attestation_service(fleet: Fleet, settings: Settings, on_failure: Callable[[str], None] | None = None) -> AttestationService:
    policy = TrustPolicy(
        interval_s=settings.challenge_interval_s,
        answer_timeout_s=settings.challenge_timeout_s,
        pass_window_s=settings.challenge_window_s,
        untrusted_after=settings.untrusted_after_failures,
    )
    return AttestationService(
        fleet,
        policy,
        bundle_max_age_s=settings.attestation_max_age_s,
        require_attestation=settings.require_attestation,
        on_failure=on_failure,
    )


class Coordinator(Starlette):
    """The coordinator's ASGI app: Starlette, with a short way in for the inference routes.

    Every awaited frame between the server and a streaming endpoint is
    resumed on every relayed chunk, and Starlette puts six (error and
    exception middleware, router, route, exception wrapper) between them.
    ``POST`` to an inference route goes from the access middleware straight
    to its endpoint instead; those endpoints answer every error themselves,
    in their API's shape (``api.adapter.handle``), so nothing is lost.
    Everything else takes the full Starlette path.
    """

    FAST = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")

    def fast_routes(self, middleware: type, **options: Any) -> None:
        self._fast: dict[str, Route] = {
            r.path: r for r in self.routes if isinstance(r, Route) and r.path in self.FAST and r.methods and "POST" in r.methods
        }
        self._fast_stack = middleware(self._fast_endpoint, **options)

    async def _fast_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope["route"]
        response = await route.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._fast.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        scope["route"] = route
        scope.setdefault("path_params", {})
        await self._fast_stack(scope, receive, send)


def create_app(settings: Settings, store: Store | None = None, hooks: list[RequestHook] | None = None) -> Starlette:
    """Build the coordinator app.

    Args:
        settings: Coordinator settings.
        store: An unopened store; by default the one ``settings`` names. The
            lifespan migrates (opens) it and closes it.
        hooks: Extra request hooks (admission and settlement), run after the built-in ones.
    """
    store = store or open_store(settings.resolved_db_url())
    metrics = CoordinatorMetrics()
    billing = billing_hook(settings, store, on_posting=metrics.ledger_posted)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.migrate()
        app.state.releases = ReleaseBook(store)
        await app.state.releases.ensure_schema()
        billing.owner = coordinator_id(settings.home)
        # Holds this coordinator left open when it last died: no request of that run will settle them.
        await billing.sweep(own=True)
        admin_key, created = ensure_admin_key(settings.home)
        app.state.admin_key_hash = hash_key(admin_key)
        if created:
            # Printed once, on first start; afterwards only the 0600 file holds it.
            print(
                f"darkbloom: admin credential (shown once; also saved 0600 to {admin_key_path(settings.home)}):\n{admin_key}",
                flush=True,
            )
        fleet = Fleet(config=settings.routing)
        app.state.fleet = fleet
        metrics.fleet = fleet
        app.state.receipts = ReceiptBook()
        fleet.privacy = PrivacyRelay(app.state.receipts)
        app.state.attestation = fleet.attestation = attestation_service(fleet, settings, metrics.attestation_failed)
        evictor = asyncio.create_task(_evict_silent_nodes(fleet, settings, app.state.events))
        upkeep = asyncio.create_task(fleet.run())
        sweeper = asyncio.create_task(sweep_stale_holds(billing, settings))
        try:
            yield
        finally:
            for task in (evictor, upkeep, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await store.close()

    routes = [
        Route("/health", consumer.health, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
        Route("/v1/responses", responses.responses, methods=["POST"]),
        Route("/v1/messages", messages.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
        Route("/v1/models", consumer.list_models, methods=["GET"]),
        *billing_api.ROUTES,
        *accounts.ROUTES,
        *device.ROUTES,
        Route("/v1/models/capacity", models.capacity, methods=["GET"]),
        Route("/v1/models/{model:path}", models.retrieve_model, methods=["GET"]),
        Route("/v1/admin/fleet", dashboard.admin_fleet, methods=["GET"]),
        Route("/v1/admin/events", dashboard.admin_events, methods=["GET"]),
        Route("/v1/network", dashboard.network, methods=["GET"]),
        Route("/v1/network/events", dashboard.network_events, methods=["GET"]),
        WebSocketRoute("/v1/provider/ws", provider_ws.provider_socket),
        Route("/metrics", metrics_api.metrics, methods=["GET"]),
        Route("/v1/stats", stats_api.stats, methods=["GET"]),
        Route("/v1/releases", releases_api.register_release, methods=["POST"]),
        Route("/v1/releases/latest", releases_api.latest_release, methods=["GET"]),
        Route("/install.sh", releases_api.install_script, methods=["GET"]),
        Route("/v1/providers/keys", providers.provider_keys, methods=["GET"]),
        Route("/v1/receipts/{request_id}", providers.get_receipt, methods=["GET"]),
        Route("/v1/{rest:path}", consumer.not_implemented, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    middleware = [Middleware(RequestContextMiddleware, metrics=metrics)]
    app = Coordinator(routes=routes, lifespan=lifespan, middleware=middleware)
    app.fast_routes(RequestContextMiddleware, metrics=metrics)
    app.state.settings = settings
    app.state.store = store
    app.state.key_cache = KeyCache()
    app.state.metrics = metrics
    service_times = models.ServiceTimes()
    app.state.service_times = service_times
    app.state.billing = billing
    app.state.earnings_paid = lambda: money.total_provider_earnings(store)
    app.state.events = EventBus()
    # Metrics and the dashboard's event bus first: they then see (and count) every job,
    # including ones billing or a later hook refuses.
    app.state.hooks = [metrics, DashboardHook(app.state.events, cost=billing.cost_of), billing, service_times, *(hooks or [])]
    return app
