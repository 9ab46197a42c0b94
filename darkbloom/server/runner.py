"""Run the coordinator under uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import uvicorn

from darkbloom.aio import tune_gc
from darkbloom.listen import listen
from darkbloom.server.app import create_app
from darkbloom.server.settings import Settings
from darkbloom.server.store import open_store

log = logging.getLogger(__name__)

COORDINATOR_PORT_HINT = "is another coordinator (or `darkbloom up`) running? pass --port to pick another"


class CoordinatorServer(uvicorn.Server):
    """uvicorn, letting the requests being relayed finish before the nodes' sockets close.

    uvicorn's own shutdown closes every WebSocket at once, so every stream in
    flight would end with an error the moment a signal arrived. This one
    first stops accepting connections, then waits up to ``drain_s`` for the
    fleet's in-flight requests to end (a second Ctrl-C stops waiting), and
    only then shuts down as uvicorn does; requests still running then end
    with "coordinator shutting down" (``Fleet.closing``).
    """

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.before_close: Callable[[], Awaitable[None]] | None = None
        """Run once the drain is over, before the sockets close (``darkbloom up`` stops its node here)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections (uvicorn's shutdown closes them again: harmless)
        fleet = getattr(self.config.app.state, "fleet", None)  # set by the lifespan once started
        if fleet is not None:
            fleet.closing = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.drain_s
            if fleet.inflight:
                log.info("waiting up to %.0f s for %d request(s) in flight", self.drain_s, len(fleet.inflight))
            while fleet.inflight and not self.force_exit and loop.time() < deadline:
                await asyncio.sleep(0.05)
        if self.before_close is not None:
            await self.before_close()
        await super().shutdown(sockets)


def uvicorn_server(settings: Settings, *, log_level: str = "info") -> CoordinatorServer:
    """A uvicorn server for the coordinator, not yet started."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,  # keep darkbloom's structured handler (darkbloom.logging_setup)
        access_log=False,  # darkbloom.server.access logs each request, with its request id
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=20,
        # Chunk frames are tens of bytes (ciphertext when sealed): deflating each cost more CPU than it saved.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    return CoordinatorServer(config, settings.shutdown_drain_s)


async def check_database(url: str) -> None:
    """Open and migrate the database once before serving.

    The app does the same at start-up, where a failure is a traceback in the
    log and exit status 3; here it is a ``StoreError`` the CLI prints in one
    line (with any password in the URL masked).
    """
    store = open_store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


def serve(settings: Settings) -> None:
    """Run the coordinator in the foreground until interrupted.

    Raises:
        darkbloom.listen.ListenError: its port cannot be had.
        StoreError: its database cannot be used (unreachable, refused, newer than this code).
    """
    sock = listen(settings.host, settings.port, hint=COORDINATOR_PORT_HINT)
    try:
        asyncio.run(check_database(settings.resolved_db_url()))
    except BaseException:
        sock.close()
        raise
    server = uvicorn_server(settings)
    tune_gc()
    # (uvicorn says where it listens only when it binds the socket itself)
    log.info("coordinator starting on http://%s:%d (Ctrl-C to stop)", settings.host, settings.port)
    server.run(sockets=[sock])
