"""The node's memory cap and model load gate: pure arithmetic, no MLX, no IO.

The cap is 0.90 x physical RAM, always leaving at least 2 GiB to the OS
(``DARKBLOOM_MEM_CAP_FRACTION`` overrides the fraction). A model may load when

    resident weights + incoming weights + activation reserve + minimum KV <= cap

where the activation reserve is 3 GiB (``DARKBLOOM_ACTIVATION_RESERVE_GB``)
and the minimum KV cache is 1 GiB. What is left under the cap after the
resident weights and the reserve is KV cache, shared between the slots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

GiB = 2**30
DEFAULT_CAP_FRACTION = 0.90
OS_FLOOR_BYTES = 2 * GiB
"""Never cap above physical RAM minus this: the OS and the rest of the machine need it."""
DEFAULT_ACTIVATION_RESERVE_GB = 3.0
MIN_KV_BYTES = 1 * GiB


def _env_float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        return default  # a typo in an env var must not stop the node; doctor shows what is in force
    return min(max(value, lo), hi)


@dataclass(frozen=True)
class MemoryPolicy:
    """The knobs of the gate, resolved from the environment once.

    Attributes:
        cap_fraction: Fraction of physical RAM the node may use.
        activation_reserve_bytes: Kept free for activations during prefill and decode.
        min_kv_bytes: The least KV cache a loaded model must have room for.
    """

    cap_fraction: float = DEFAULT_CAP_FRACTION
    activation_reserve_bytes: int = int(DEFAULT_ACTIVATION_RESERVE_GB * GiB)
    min_kv_bytes: int = MIN_KV_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MemoryPolicy:
        """Read ``DARKBLOOM_MEM_CAP_FRACTION`` and ``DARKBLOOM_ACTIVATION_RESERVE_GB`` (bad values fall back)."""
        env = os.environ if env is None else env
        fraction = _env_float(env, "DARKBLOOM_MEM_CAP_FRACTION", DEFAULT_CAP_FRACTION, 0.05, 1.0)
        reserve = _env_float(env, "DARKBLOOM_ACTIVATION_RESERVE_GB", DEFAULT_ACTIVATION_RESERVE_GB, 0.0, 1024.0)
        return cls(cap_fraction=fraction, activation_reserve_bytes=int(reserve * GiB))


def memory_cap_bytes(total_bytes: int, policy: MemoryPolicy) -> int:
    """The hard cap: ``fraction x RAM``, but never more than RAM minus 2 GiB."""
    return max(0, min(int(total_bytes * policy.cap_fraction), total_bytes - OS_FLOOR_BYTES))


@dataclass(frozen=True)
class LoadDecision:
    """The gate's verdict on one load, with the numbers behind it (bytes)."""

    ok: bool
    cap: int
    resident: int
    incoming: int
    reserve: int
    min_kv: int

    @property
    def needed(self) -> int:
        return self.resident + self.incoming + self.reserve + self.min_kv

    @property
    def reason(self) -> str:
        """A refusal a provider can act on: every term of the sum, in GiB."""
        verdict = "fits" if self.ok else "would exceed the memory cap"
        return (
            f"{verdict}: resident weights {_gb(self.resident)} + this model {_gb(self.incoming)} "
            f"+ activation reserve {_gb(self.reserve)} + minimum KV cache {_gb(self.min_kv)} "
            f"= {_gb(self.needed)} {'<=' if self.ok else '>'} cap {_gb(self.cap)}"
        )


def _gb(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def load_gate(total_bytes: int, resident_bytes: int, incoming_bytes: int, policy: MemoryPolicy) -> LoadDecision:
    """May a model of ``incoming_bytes`` load next to ``resident_bytes`` of loaded weights?"""
    cap = memory_cap_bytes(total_bytes, policy)
    need = resident_bytes + incoming_bytes + policy.activation_reserve_bytes + policy.min_kv_bytes
    return LoadDecision(
        need <= cap, cap, resident_bytes, incoming_bytes, policy.activation_reserve_bytes, policy.min_kv_bytes
    )


def kv_headroom_bytes(total_bytes: int, resident_bytes: int, policy: MemoryPolicy) -> int:
    """Bytes left for KV caches once the weights and the activation reserve are paid for."""
    return max(0, memory_cap_bytes(total_bytes, policy) - resident_bytes - policy.activation_reserve_bytes)


def free_for_load_gb(total_bytes: int, resident_bytes: int, policy: MemoryPolicy) -> float:
    """The largest model (GiB of weights) that would pass the gate now; what the heartbeat reports."""
    free = kv_headroom_bytes(total_bytes, resident_bytes, policy) - policy.min_kv_bytes
    return round(max(0, free) / GiB, 2)


def kv_bytes_per_token(config: Mapping[str, object], dtype_bytes: int = 2) -> int:
    """KV cache bytes one token costs: keys and values, every layer, every KV head.

    Args:
        config: A Hugging Face style model config (``num_hidden_layers``, heads, sizes).
        dtype_bytes: Bytes per cached element (the cache takes the activation dtype).
    """

    def num(key: str, default: int = 0) -> int:
        value = config.get(key, default)
        return int(value) if isinstance(value, (int, float)) and value else default

    layers = num("num_hidden_layers")
    heads = num("num_attention_heads", 1)
    kv_heads = num("num_key_value_heads", heads)
    head_dim = num("head_dim") or (num("hidden_size") // max(heads, 1))
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def kv_token_budget(headroom_bytes: int, per_token_bytes: int, ceiling: int) -> int:
    """How many KV tokens fit in ``headroom_bytes``, never more than ``ceiling`` (context x concurrency)."""
    if per_token_bytes <= 0:
        return ceiling
    return max(0, min(ceiling, headroom_bytes // per_token_bytes))
