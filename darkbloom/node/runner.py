"""Start a provider node: describe and load its models, then serve until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from darkbloom.node.client import NodeSession
from darkbloom.node.engine.base import Engine
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.node.hardware import detect_hardware
from darkbloom.node.identity import load_or_create_node_id
from darkbloom.node.metrics import session_collector, start_node_metrics
from darkbloom.node.models.local import ModelDirError, describe
from darkbloom.protocol import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    """What ``darkbloom node`` was asked to do."""

    coordinator: str
    model_paths: tuple[Path, ...]
    home: Path
    max_concurrency: int = 8


class NodeStartError(RuntimeError):
    """The node has nothing it can serve."""


async def load_engines(cfg: NodeConfig, say: Callable[[str], None]) -> tuple[dict[str, Engine], tuple[ModelInfo, ...]]:
    """Describe every model path and load the ones that pass their checks."""
    engines: dict[str, Engine] = {}
    infos: list[ModelInfo] = []
    for path in cfg.model_paths:
        try:
            info, template_err = await asyncio.to_thread(describe, path)
        except ModelDirError as exc:
            say(f"skipping {path}: {exc}")
            continue
        infos.append(info)
        if not info.template_render_ok:
            say(f"not serving {info.id}: its chat template does not render ({template_err})")
            continue
        say(f"loading {info.id} from {path} ...")
        engine = MLXEngine(path, info.id, max_concurrency=cfg.max_concurrency, context_length=info.context_length or None)
        try:
            await asyncio.to_thread(engine.wait_ready)
        except Exception as exc:
            say(f"could not load {info.id}: {exc}")
            continue
        engines[info.id] = engine
    if not engines:
        raise NodeStartError("no model could be loaded; pass --model with a local MLX model directory")
    return engines, tuple(infos)


async def run_node(cfg: NodeConfig, say: Callable[[str], None] = print) -> None:
    """Load models and keep a session with the coordinator until cancelled."""
    engines, infos = await load_engines(cfg, say)
    token_file = cfg.home / "node" / "provider_token"  # written 0600 by `darkbloom node login`
    token = token_file.read_text().strip() if token_file.exists() else None
    session = NodeSession(cfg.coordinator, load_or_create_node_id(cfg.home), engines, infos, detect_hardware(), on_status=say, auth_token=token or None)
    exporter = start_node_metrics(session_collector(session))
    try:
        await session.run_forever()
    finally:
        if exporter is not None:
            exporter.close()
        for engine in engines.values():
            await asyncio.to_thread(engine.close)
