"""Start a provider node: find and load its models, then serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from darkbloom.node.blas import slow_blas_warning
from darkbloom.node.attestation import NodeAttestor
from darkbloom.node.client import NodeSession
from darkbloom.node.daemon import NODE_DRAIN_S, status_file
from darkbloom.node.hardware import detect_hardware, physical_memory_bytes
from darkbloom.node.homelock import HomeBusy, hold_home
from darkbloom.node.identity import NodeKeys
from darkbloom.node.metrics import session_collector, start_node_metrics
from darkbloom.node.models.scan import ScanEntry, scan, scan_dir, weight_hash
from darkbloom.node.slots import DEFAULT_IDLE_UNLOAD_S, SlotManager, mlx_engine_factory
from darkbloom.protocol import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    """What ``darkbloom node`` was asked to do.

    With no ``model_paths`` the node serves every usable model the scan finds
    (``<home>/models`` and the Hugging Face cache).
    """

    coordinator: str
    model_paths: tuple[Path, ...]
    home: Path
    max_concurrency: int = 8
    max_slots: int = 3
    idle_unload_s: float = DEFAULT_IDLE_UNLOAD_S


class NodeStartError(RuntimeError):
    """The node has nothing it can serve."""


def find_models(cfg: NodeConfig, say: Callable[[str], None]) -> list[ScanEntry]:
    """The models this node offers; broken directories are reported and skipped."""
    entries = [scan_dir(p, "given") for p in cfg.model_paths] if cfg.model_paths else scan(cfg.home)
    usable: list[ScanEntry] = []
    for e in entries:
        if e.info is None:
            say(f"skipping {e.path}: {e.error}")
        elif not e.info.template_render_ok:
            say(f"not serving {e.info.id}: its chat template does not render ({e.error})")
        else:
            usable.append(e)
    return usable


async def build_slots(cfg: NodeConfig, say: Callable[[str], None]) -> tuple[SlotManager, tuple[ModelInfo, ...]]:
    """Scan, then load the first ``max_slots`` usable models under the memory gate."""
    entries = await asyncio.to_thread(find_models, cfg, say)
    usable = {e.info.id: (e.path, e.info) for e in entries if e.info is not None}
    slots = SlotManager(
        usable,
        physical_memory_bytes(),
        mlx_engine_factory(cfg.max_concurrency),
        max_slots=cfg.max_slots,
        max_concurrency=cfg.max_concurrency,
        idle_unload_s=cfg.idle_unload_s,
        on_status=say,
    )
    for model_id, (path, _info) in list(usable.items())[: cfg.max_slots]:
        say(f"loading {model_id} from {path} ...")
        status = await slots.load(model_id)
        if status.status != "loaded":
            say(f"could not load {model_id}: {status.reason}")
    if not slots.loaded():
        where = (
            "pass --model with a local MLX model directory"
            if cfg.model_paths
            else f"put one under {cfg.home / 'models'} or pass --model"
        )
        raise NodeStartError(f"no model could be loaded; {where}")
    return slots, tuple(info for _p, info in usable.values())


async def _reap_idle(slots: SlotManager) -> None:
    # Check often enough that an idle model goes within ~10% of its idle time.
    period = max(1.0, min(60.0, slots.idle_unload_s / 10))
    while True:
        await asyncio.sleep(period)
        await slots.tick()


async def _report_status(cfg: NodeConfig, session: NodeSession, period: float = 5.0) -> None:
    # `darkbloom node status` reads this; written atomically so a reader never sees half a file.
    path = status_file(cfg.home)
    while True:
        cap = session.slots.capacity(0, session.hardware.memory_gb)
        report = {
            "pid": os.getpid(),  # `node status` tells a report of this run from one a dead node left behind
            "coordinator": cfg.coordinator,
            "connected": session.connected.is_set(),
            "total_memory_gb": cap.total_memory_gb,
            "free_for_load_gb": cap.free_for_load_gb,
            "slots": [{f: getattr(s, f) for f in s.__struct_fields__} for s in cap.slots],
        }
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(report, indent=1))
            tmp.replace(path)
        await asyncio.sleep(period)


def make_attestor(home: Path, slots: SlotManager) -> NodeAttestor:
    """This node's keys (created on first start) and the weight hashes it attests to, for every model it offers."""
    cache = home / "cache" / "weight-hashes.json"  # shared with `darkbloom node models --hash`
    hashes = {mid: weight_hash(slot.path, cache) for mid, slot in slots.slots.items()}
    return NodeAttestor(NodeKeys.load_or_create(home), detect_hardware(), hashes)


def end_process() -> NoReturn:
    """End a node process that has stopped cleanly, skipping the interpreter's teardown.

    MLX's C++ runtime can abort in its static destructors at interpreter exit
    ("terminate called without an active exception", then SIGABRT): seen in
    about one stop in ten under load, turning a clean stop into status -6.
    By the time this runs every engine is closed, the coordinator has had its
    goodbye and the home lock is released; only logs and stdio need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


async def run_node(cfg: NodeConfig, say: Callable[[str], None] = print, *, drain_on_sigterm: bool = False) -> None:
    """Load models and keep a session with the coordinator until cancelled.

    With ``drain_on_sigterm`` (``darkbloom node``, which owns its process),
    SIGTERM, and Ctrl-C where SIGINT is not ignored, first drain: the
    coordinator routes nothing more here and the requests running finish
    (up to ``NODE_DRAIN_S``); then this returns. A second signal ends it at
    once. Before the node serves (models loading), either ends it at once.

    Raises:
        NodeStartError: another node runs from this home, or no model could be loaded.
    """
    try:
        lock = hold_home(cfg.home)  # held until this node ends: one node per home (and node identity)
    except HomeBusy as exc:
        raise NodeStartError(str(exc)) from None
    stop = SigtermDrain(say) if drain_on_sigterm else None
    try:
        await _serve(cfg, say, stop)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if stop is not None and stop.requested and task is not None and task.uncancel() == 0:
            return  # stopped by SIGTERM: a clean end
        raise
    finally:
        lock.close()


class SigtermDrain:
    """SIGTERM or Ctrl-C drains the node's session, then ends ``run_node``; a second signal ends it at once.

    A provider who presses Ctrl-C on a foreground node gets the same drain
    as ``darkbloom node stop``: consumers' streams in flight end whole
    rather than cut off. SIGINT is left alone where it is ignored (a node
    started with ``&`` from a script).
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.requested = False
        self._draining: asyncio.Task[None] | None = None

    def install(self, session: NodeSession) -> None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def stop_now() -> None:
            if self.requested:  # once: a second cancel would land in the node's own clean-up
                return
            self.requested = True
            if self._draining is not None and self._draining is not asyncio.current_task():
                self._draining.cancel()
            main.cancel()

        async def drain_then_stop() -> None:
            await session.drain(NODE_DRAIN_S)
            stop_now()

        def on_signal(again: str) -> None:
            if self._draining is not None:
                stop_now()
                return
            self.say(
                f"stopping: finishing {session.active_requests()} request(s) in flight "
                f"(up to {NODE_DRAIN_S:.0f} s; {again} again to stop now)"
            )
            self._draining = loop.create_task(drain_then_stop())

        loop.add_signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            loop.add_signal_handler(signal.SIGINT, on_signal, "Ctrl-C")


async def _serve(cfg: NodeConfig, say: Callable[[str], None], stop: SigtermDrain | None) -> None:
    if (warning := slow_blas_warning()) is not None:
        say(warning)
    slots, infos = await build_slots(cfg, say)
    token_file = cfg.home / "node" / "provider_token"  # written 0600 by `darkbloom node login`
    token = token_file.read_text().strip() if token_file.exists() else None
    attestor = await asyncio.to_thread(make_attestor, cfg.home, slots)
    session = NodeSession(
        cfg.coordinator, attestor.node_id, slots, infos, attestor.hardware,
        on_status=say, auth_token=token or None, attestor=attestor,
    )
    if stop is not None:
        stop.install(session)
    exporter = start_node_metrics(session_collector(session))
    cfg.home.mkdir(parents=True, exist_ok=True)
    helpers = [asyncio.create_task(_reap_idle(slots)), asyncio.create_task(_report_status(cfg, session))]
    try:
        await session.run_forever()
    finally:
        if exporter is not None:
            exporter.close()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await slots.close()
