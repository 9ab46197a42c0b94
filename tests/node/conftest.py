"""Node test helpers: copies of the tiny model under other names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_model(src: Path, dest: Path, model_id: str | None = None) -> Path:
    """Copy a model directory; ``model_id`` (default: the new dir name) is what a node advertises."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["darkbloom_model_id"] = model_id or dest.name
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest
