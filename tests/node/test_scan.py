"""Model scan: finds models in both layouts, reports broken ones, hashes only on demand."""

from __future__ import annotations

import json
import os
from pathlib import Path

from darkbloom.node.models.scan import scan, weight_hash
from tests.node.conftest import copy_model


def _hf_repo(cache: Path, repo: str, model: Path) -> Path:
    """Lay ``model`` out the way huggingface_hub does: blobs, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / "abc123"
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in model.iterdir():
        blob = root / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc123")
    return snap


def test_scan_finds_both_layouts_and_reports_broken_dirs_without_raising(tiny_model_dir: Path, tmp_path: Path) -> None:
    home, cache = tmp_path / "home", tmp_path / "hf"
    copy_model(tiny_model_dir, home / "models" / "good")
    (home / "models" / "garbage").mkdir()
    (home / "models" / "garbage" / "config.json").write_text("{not json")
    (home / "models" / "empty").mkdir()
    noweights = copy_model(tiny_model_dir, home / "models" / "noweights")
    (noweights / "model.safetensors").unlink()
    badtpl = copy_model(tiny_model_dir, home / "models" / "badtpl")
    tc = json.loads((badtpl / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for m in messages %}{{ m['content'] }{% endfor %}"  # unbalanced: does not compile
    (badtpl / "tokenizer_config.json").write_text(json.dumps(tc))
    hf_dir = tmp_path / "plain"
    copy_model(tiny_model_dir, hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    del cfg["darkbloom_model_id"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    _hf_repo(cache, "acme/tiny-chat", hf_dir)

    entries = {e.path.name if e.source == "darkbloom" else e.info.id: e for e in scan(home, hf_cache=cache)}  # type: ignore[union-attr]

    assert entries["good"].servable and entries["good"].info.size_bytes > 0  # type: ignore[union-attr]
    assert entries["acme/tiny-chat"].source == "hf-cache" and entries["acme/tiny-chat"].servable
    assert entries["garbage"].info is None and "unreadable" in entries["garbage"].error
    assert entries["empty"].info is None and "config.json" in entries["empty"].error
    assert entries["noweights"].info is None and "safetensors" in entries["noweights"].error
    assert entries["badtpl"].info is not None and not entries["badtpl"].servable
    assert entries["badtpl"].info.template_render_ok is False and entries["badtpl"].error
    assert all(e.info is None or e.info.weight_hash is None for e in entries.values()), "scan must not hash"


def test_weight_hash_is_cached_by_path_size_and_mtime(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    cache = tmp_path / "cache" / "hashes.json"
    first = weight_hash(model, cache)
    assert first.startswith("sha256:") and len(first) == 7 + 64

    # Prove the second call reads the cache: plant a marker value under the same stamp.
    data = json.loads(cache.read_text())
    (entry,) = data.values()
    entry["sha256"] = "sha256:from-cache"
    cache.write_text(json.dumps(data))
    assert weight_hash(model, cache) == "sha256:from-cache"

    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert weight_hash(model, cache) == first, "a new mtime must re-hash (same bytes, same digest)"
    with weights.open("ab") as f:
        f.write(b"\0")
    assert weight_hash(model, cache) not in (first, "sha256:from-cache")

    cache.write_text("[corrupt")
    assert weight_hash(model, cache).startswith("sha256:")
