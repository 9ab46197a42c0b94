"""Find the MLX models on this machine, fast: configs and templates only, never the weights.

Two layouts are scanned: the darkbloom models directory (``<home>/models/<name>/``)
and the Hugging Face hub cache (``models--org--name/snapshots/<rev>/``). A
broken directory is reported with its reason and skipped, never raised.
SHA-256 of the weights is computed only on demand (``weight_hash``) and cached
by path, size and mtime, so a second call costs a few ``stat`` calls.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from darkbloom.node.models.local import ModelDirError, describe
from darkbloom.protocol import ModelInfo


@dataclass(frozen=True)
class ScanEntry:
    """One directory the scan looked at.

    Attributes:
        path: The model directory.
        source: ``darkbloom`` or ``hf-cache``.
        info: What a node would advertise; ``None`` when the directory is unusable.
        error: Why the directory is unusable, or why its template does not render.
    """

    path: Path
    source: str
    info: ModelInfo | None
    error: str = ""

    @property
    def servable(self) -> bool:
        return self.info is not None and self.info.template_render_ok


def hf_cache_dir(env: dict[str, str] | None = None) -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    env = dict(os.environ) if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _hf_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot ``refs/main`` points at, else the newest one."""
    snaps = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    try:
        if ref.is_file():
            cand = snaps / ref.read_text().strip()
            if cand.is_dir():
                return cand
        dirs = [d for d in snaps.iterdir() if d.is_dir()]
    except OSError:
        return None
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def candidate_dirs(home: Path, hf_cache: Path | None = None) -> list[tuple[Path, str]]:
    """Every directory that may hold a model, with where it was found."""
    out: list[tuple[Path, str]] = []
    models = home / "models"
    if models.is_dir():
        out += [(d, "darkbloom") for d in sorted(models.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    hf = hf_cache if hf_cache is not None else hf_cache_dir()
    if hf.is_dir():
        for repo in sorted(hf.glob("models--*")):
            snap = _hf_snapshot(repo)
            if snap is not None:
                out.append((snap, "hf-cache"))
    return out


def _hf_model_id(snapshot: Path) -> str:
    # models--org--name/snapshots/<rev> -> org/name, as the hub spells it.
    return snapshot.parent.parent.name.removeprefix("models--").replace("--", "/")


def scan_dir(path: Path, source: str = "darkbloom") -> ScanEntry:
    """Describe one directory; a broken one yields an entry with ``error`` set."""
    try:
        info, template_err = describe(path)
    except ModelDirError as exc:
        return ScanEntry(path, source, None, str(exc))
    except Exception as exc:  # a corrupt file must be reported, not crash the scan
        return ScanEntry(path, source, None, f"{type(exc).__name__}: {exc}")
    if source == "hf-cache" and info.id == path.name:
        info = ModelInfo(**{**_struct_dict(info), "id": _hf_model_id(path)})
    return ScanEntry(path, source, info, template_err)


def _struct_dict(info: ModelInfo) -> dict:
    return {f: getattr(info, f) for f in info.__struct_fields__}


def scan(home: Path, *, hf_cache: Path | None = None, extra: Iterable[Path] = ()) -> list[ScanEntry]:
    """Scan the darkbloom models dir, the HF cache and any ``extra`` directories.

    Returns:
        One entry per directory, broken ones included (with ``error``). When two
        directories advertise the same id, the first wins and the rest say so.
    """
    entries = [scan_dir(Path(p), "given") for p in extra]
    entries += [scan_dir(p, src) for p, src in candidate_dirs(home, hf_cache)]
    seen: dict[str, Path] = {}
    out: list[ScanEntry] = []
    for e in entries:
        if e.info is not None and e.info.id in seen:
            if seen[e.info.id].resolve() != e.path.resolve():
                out.append(
                    ScanEntry(e.path, e.source, None, f"duplicate model id {e.info.id!r} (also at {seen[e.info.id]})")
                )
            continue
        if e.info is not None:
            seen[e.info.id] = e.path
        out.append(e)
    return out


# ---- on-demand weight hashing -------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def weight_hash(path: Path, cache_file: Path) -> str:
    """SHA-256 over the model's weight files (sorted by name), cached by path, size and mtime.

    Args:
        path: A model directory.
        cache_file: JSON cache (created if missing; a corrupt one is rebuilt).

    Returns:
        ``sha256:<hex>``.
    """
    files = _weight_files(path)
    if not files:
        raise ModelDirError(f"{path} holds no .safetensors weights")
    stamp = [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]
    key = str(path.resolve())
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    value = f"sha256:{digest.hexdigest()}"
    cache[key] = {"stamp": stamp, "sha256": value}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(cache_file)
    return value
