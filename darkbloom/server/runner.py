"""Run the coordinator under uvicorn."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from darkbloom.aio import tune_gc
from darkbloom.listen import listen
from darkbloom.server.app import create_app
from darkbloom.server.settings import Settings
from darkbloom.server.store import open_store

log = logging.getLogger(__name__)

COORDINATOR_PORT_HINT = "is another coordinator (or `darkbloom up`) running? pass --port to pick another"


def uvicorn_server(settings: Settings, *, log_level: str = "info") -> uvicorn.Server:
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
    return uvicorn.Server(config)


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
