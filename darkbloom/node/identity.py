"""Node identity kept under the darkbloom home."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def load_or_create_node_id(home: Path) -> str:
    """This node's stable id, created on first start (``node-`` + 12 hex)."""
    path = home / "node" / "node_id"
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    node_id = f"node-{uuid.uuid4().hex[:12]}"
    write_private(path, node_id)
    return node_id
