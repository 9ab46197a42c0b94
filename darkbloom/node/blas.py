"""Use the fastest BLAS on Linux: preload an optimized OpenBLAS before ``mlx.core`` is imported.

The ``mlx[cpu]`` wheel links the reference BLAS. Loading OpenBLAS with
``RTLD_GLOBAL`` first puts its ``cblas_sgemm`` ahead of the wheel's in symbol
lookup, which was measured at 45x faster float32 matmul and 10x faster
prefill on a Linux CPU. On macOS MLX uses Accelerate and Metal; nothing to do.

``DARKBLOOM_BLAS`` picks: unset or ``auto`` (search the usual places), a path
to a shared library, or ``off``. Nothing here fails: without an optimized
BLAS the node still runs, only slower, and ``doctor`` says how to fix it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from dataclasses import dataclass

CANDIDATES = (
    # Debian/Ubuntu: libopenblas0-pthread (preferred: threaded) or libopenblas0-openmp
    "/usr/lib/{triplet}/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{triplet}/libopenblas.so.0",
    # Fedora/RHEL: openblas-threads; Arch: openblas
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)
INSTALL_HINT = (
    "install an optimized BLAS: Debian/Ubuntu `sudo apt-get install libopenblas0-pthread`, "
    "Fedora `sudo dnf install openblas-threads`, Arch `sudo pacman -S openblas`"
)


@dataclass(frozen=True)
class BlasStatus:
    """Which BLAS the node's MLX uses, and why."""

    name: str
    path: str = ""
    note: str = ""

    @property
    def optimized(self) -> bool:
        return self.name not in ("reference", "unknown")


_status: BlasStatus | None = None


def _triplet() -> str:
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(platform.machine(), "")


def _choice(env: dict[str, str] | None) -> str:
    """``DARKBLOOM_BLAS`` as set: ``auto`` (also when unset), ``off``, or a library path."""
    choice = (os.environ if env is None else env).get("DARKBLOOM_BLAS", "auto").strip() or "auto"
    return choice.lower() if choice.lower() in ("auto", "off") else choice


def find_openblas(env: dict[str, str] | None = None) -> str | None:
    """The first OpenBLAS library on this machine, or the one ``DARKBLOOM_BLAS`` names."""
    choice = _choice(env)
    if choice == "off":
        return None
    if choice != "auto":
        return choice if os.path.exists(choice) else None  # preload_blas says it does not exist
    for pattern in CANDIDATES:
        for path in sorted(glob.glob(pattern.format(triplet=_triplet() or "*"))):
            if os.path.exists(path):
                return path
    return None


def preload_blas(env: dict[str, str] | None = None) -> BlasStatus:
    """Load OpenBLAS globally if it can still take effect; remember what happened (idempotent)."""
    global _status
    if _status is not None:
        return _status
    if sys.platform == "darwin":
        _status = BlasStatus("accelerate", note="macOS: MLX uses Accelerate (CPU) and Metal (GPU)")
        return _status
    if sys.platform != "linux":
        _status = BlasStatus("unknown")
        return _status
    path = find_openblas(env)
    if path is None:
        choice = _choice(env)
        if choice == "off":
            note = "DARKBLOOM_BLAS=off"
        elif choice != "auto":
            note = f"DARKBLOOM_BLAS={choice} does not exist; {INSTALL_HINT}"
        else:
            note = f"no OpenBLAS found; {INSTALL_HINT}"
        _status = BlasStatus("reference", note=note)
        return _status
    if "mlx.core" in sys.modules:
        # Too late for symbol interposition: mlx already bound the reference BLAS.
        _status = BlasStatus("reference", path, note="mlx.core was imported before the BLAS preload")
        return _status
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        _status = BlasStatus("reference", path, note=f"could not load {path}: {exc}")
        return _status
    _status = BlasStatus("openblas", path)
    return _status


def blas_status() -> BlasStatus:
    """What ``preload_blas`` did (running it if nobody has)."""
    return _status if _status is not None else preload_blas()


def slow_blas_warning(status: BlasStatus | None = None) -> str | None:
    """A line for the node's start-up when MLX is left on the reference BLAS on Linux (not chosen with ``off``).

    There a node decodes several times slower and hardly gains from batching,
    which a provider would otherwise only see as a slow node.
    """
    status = status or blas_status()
    if sys.platform != "linux" or status.optimized or status.note == "DARKBLOOM_BLAS=off":
        return None
    why = status.note.partition(f"; {INSTALL_HINT}")[0]
    return (
        f"warning: MLX is using the reference BLAS ({why or 'no OpenBLAS'}), so this node runs several times slower "
        f"and barely gains from batching; to fix it, {INSTALL_HINT}, then start it again "
        "(`darkbloom node doctor` checks it; DARKBLOOM_BLAS=off silences this)"
    )
