"""The BLAS preload, in fresh interpreters (it must run before mlx.core is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from darkbloom.node.blas import INSTALL_HINT, BlasStatus, find_openblas, slow_blas_warning

SCRIPT = """
import json, os, sys
from darkbloom.node.blas import blas_status
st = blas_status()
import mlx.core as mx
a = mx.ones((64, 64))
mx.eval(a @ a)  # matmul works whichever BLAS is bound
maps = open('/proc/self/maps').read() if sys.platform == 'linux' else ''
print(json.dumps({"name": st.name, "path": st.path, "note": st.note, "mapped": bool(st.path) and os.path.realpath(st.path) in maps}))
"""


def _run(env: dict[str, str], pre: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", pre + SCRIPT], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_off_keeps_the_reference_blas_and_says_why() -> None:
    st = _run({"DARKBLOOM_BLAS": "off"})
    assert (st["name"], st["note"], st["mapped"]) == ("reference", "DARKBLOOM_BLAS=off", False)


def test_auto_preloads_openblas_when_the_machine_has_it_else_says_how_to_install() -> None:
    st = _run({"DARKBLOOM_BLAS": "auto"})
    found = find_openblas({"DARKBLOOM_BLAS": "auto"})
    if found and sys.platform == "linux":
        assert (st["name"], st["path"], st["mapped"]) == ("openblas", found, True)
    elif sys.platform == "linux":
        assert st["name"] == "reference" and "apt-get install libopenblas0-pthread" in st["note"]


def test_a_named_library_that_does_not_exist_or_a_late_preload_falls_back() -> None:
    missing = _run({"DARKBLOOM_BLAS": "/nonexistent/libopenblas.so.0"})
    assert missing["name"] in ("reference", "accelerate")
    if sys.platform == "linux":
        assert "DARKBLOOM_BLAS=/nonexistent/libopenblas.so.0 does not exist" in missing["note"]
    late = _run({"DARKBLOOM_BLAS": "auto"}, pre="import mlx.core\n")
    if sys.platform == "linux" and find_openblas({"DARKBLOOM_BLAS": "auto"}):
        assert late["name"] == "reference" and "imported before" in late["note"]


def test_a_node_left_on_the_reference_blas_says_so_and_how_to_fix_it() -> None:
    warning = slow_blas_warning(BlasStatus("reference", note=f"no OpenBLAS found; {INSTALL_HINT}"))
    if sys.platform != "linux":
        assert warning is None  # macOS: Accelerate and Metal
        return
    assert warning is not None and "(no OpenBLAS found)" in warning and "apt-get install libopenblas0-pthread" in warning
    assert slow_blas_warning(BlasStatus("openblas", "/usr/lib/libopenblas.so.0")) is None
    assert slow_blas_warning(BlasStatus("reference", note="DARKBLOOM_BLAS=off")) is None  # chosen: not nagged
