"""``darkbloom node doctor``: check what a provider node needs and say what to fix.

Each check is a plain function returning ``Check``s; nothing here raises, so
a broken model directory or an unreachable coordinator is a line in the
report, never a traceback.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import httpx

from darkbloom.node.blas import INSTALL_HINT, blas_status
from darkbloom.node.hardware import physical_memory_bytes
from darkbloom.node.memory import GiB, MemoryPolicy, free_for_load_gb, memory_cap_bytes
from darkbloom.node.models.scan import ScanEntry, hf_cache_dir, scan
from darkbloom.protocol import ModelInfo


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` False means ``fix`` says what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_backend() -> list[Check]:
    try:
        import mlx.core as mx
    except Exception as exc:  # a broken install is exactly what doctor is for
        return [
            Check("MLX", False, f"cannot import mlx: {exc}", "reinstall: pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
        ]
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    backend = "Metal GPU" if metal else "CPU"
    checks = [Check("MLX backend", True, f"mlx {getattr(mx, '__version__', '?')} on {backend} ({mx.default_device()})")]
    blas = blas_status()
    if metal or platform.system() == "Darwin":
        checks.append(Check("BLAS", True, f"{blas.name} ({blas.note})" if blas.note else blas.name))
    elif blas.optimized:
        checks.append(Check("BLAS", True, f"OpenBLAS preloaded from {blas.path}"))
    else:
        note = blas.note.removesuffix(f"; {INSTALL_HINT}")  # the fix line below says it
        checks.append(Check("BLAS", False, f"reference BLAS ({note})", INSTALL_HINT))
    fmt = (
        "quantized weights stay quantized (Metal)"
        if metal
        else "small GGUF models are dequantized to float32 for CPU serving"
    )
    checks.append(Check("weight format", True, fmt))
    return checks


def check_memory(policy: MemoryPolicy | None = None) -> list[Check]:
    policy = policy or MemoryPolicy.from_env()
    total = physical_memory_bytes()
    if not total:
        return [Check("memory", False, "could not read the machine's RAM size", "report this platform as a bug")]
    cap = memory_cap_bytes(total, policy)
    free = free_for_load_gb(total, 0, policy)
    detail = (
        f"{total / GiB:.1f} GiB RAM, cap {cap / GiB:.1f} GiB ({policy.cap_fraction:.0%}, >= 2 GiB left to the OS), "
        f"activation reserve {policy.activation_reserve_bytes / GiB:.1f} GiB: models up to {free:.1f} GiB fit"
    )
    ok = free > 0
    fix = (
        ""
        if ok
        else "this machine is too small for the cap; lower DARKBLOOM_ACTIVATION_RESERVE_GB or raise DARKBLOOM_MEM_CAP_FRACTION"
    )
    return [Check("memory", ok, detail, fix)]


def check_models(home: Path, entries: list[ScanEntry] | None = None) -> list[Check]:
    entries = scan(home) if entries is None else entries
    servable = [e for e in entries if e.servable]
    where = f"{home / 'models'} and {hf_cache_dir()}"
    checks = [
        Check(
            "model dirs",
            bool(servable),
            f"{len(servable)} servable model(s) in {where}",
            ""
            if servable
            else f"import one: darkbloom node models import FILE.gguf (or put an MLX model dir under {home / 'models'})",
        )
    ]
    for e in entries:
        if e.servable and e.info is not None:
            fmt = e.info.quantization or "unknown format"
            detail = f"{fmt} weights, {e.info.size_bytes / GiB:.2f} GiB, {e.path}; {serves(e.info)}"
            checks.append(Check(f"model {e.info.id}", True, detail))
        elif e.info is None:
            checks.append(
                Check(
                    f"model {e.path.name}", False, f"{e.path}: {e.error}", "fix or remove the directory; it is skipped"
                )
            )
        elif not e.servable:
            checks.append(
                Check(
                    f"model {e.info.id}",
                    False,
                    f"chat template does not render: {e.error}",
                    "fix tokenizer_config.json's chat_template",
                )
            )
    return checks


def serves(info: ModelInfo) -> str:
    """What a model's requests may ask of this node beyond plain chat, as it advertises them."""
    have = [name for flag, name in _FEATURES if getattr(info, flag)]
    return "serves chat" + "".join(f", {name}" for name in have)


_FEATURES = (
    ("supports_tools", "tool calls"),
    ("supports_tool_choice", "forced tool calls"),
    ("supports_json", "JSON output"),
    ("supports_logprobs", "logprobs"),
)


def check_coordinator(url: str, timeout: float = 3.0) -> list[Check]:
    health = url.rstrip("/") + "/health"
    try:
        resp = httpx.get(health, timeout=timeout)
    except httpx.HTTPError as exc:
        return [
            Check(
                "coordinator",
                False,
                f"{health} unreachable: {exc}",
                "start one (darkbloom serve / up) or pass --coordinator URL",
            )
        ]
    if resp.status_code != 200:
        return [
            Check("coordinator", False, f"{health} answered {resp.status_code}", "is that URL a darkbloom coordinator?")
        ]
    return [Check("coordinator", True, f"{url} is up")]


def run_doctor(home: Path, coordinator: str) -> list[Check]:
    """Every check, in the order a provider would fix them."""
    return [*check_backend(), *check_memory(), *check_models(home), *check_coordinator(coordinator)]


def format_report(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{'ok' if c.ok else '!!'}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"      fix: {c.fix}")
    bad = sum(1 for c in checks if not c.ok)
    lines.append("all good" if not bad else f"{bad} problem(s) to fix")
    return "\n".join(lines)
