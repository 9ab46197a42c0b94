"""The memory cap and load gate: the arithmetic a provider's machine depends on."""

from __future__ import annotations

import pytest

from darkbloom.node.memory import (
    GiB,
    MemoryPolicy,
    free_for_load_gb,
    kv_bytes_per_token,
    kv_token_budget,
    load_gate,
    memory_cap_bytes,
)

DEFAULT = MemoryPolicy()


@pytest.mark.parametrize(
    ("ram_gb", "cap_gb"),
    [(64, 57.6), (32, 28.8), (16, 14.0), (8, 6.0), (4, 2.0), (2, 0.0), (1, 0.0)],
)
def test_cap_is_ninety_percent_but_always_leaves_two_gib(ram_gb: int, cap_gb: float) -> None:
    assert memory_cap_bytes(ram_gb * GiB, DEFAULT) == pytest.approx(cap_gb * GiB, abs=1)


def test_env_overrides_fraction_and_reserve_and_bad_values_fall_back() -> None:
    pol = MemoryPolicy.from_env({"DARKBLOOM_MEM_CAP_FRACTION": "0.5", "DARKBLOOM_ACTIVATION_RESERVE_GB": "1.5"})
    assert (pol.cap_fraction, pol.activation_reserve_bytes) == (0.5, int(1.5 * GiB))
    assert memory_cap_bytes(64 * GiB, pol) == 32 * GiB
    bad = MemoryPolicy.from_env({"DARKBLOOM_MEM_CAP_FRACTION": "lots", "DARKBLOOM_ACTIVATION_RESERVE_GB": ""})
    assert bad == DEFAULT
    assert MemoryPolicy.from_env({"DARKBLOOM_MEM_CAP_FRACTION": "7"}).cap_fraction == 1.0


def test_gate_admits_exactly_up_to_the_cap_and_refuses_with_every_number() -> None:
    total = 32 * GiB  # cap 28.8 GiB; reserve 3 + min KV 1 leave 24.8 GiB for weights
    room = memory_cap_bytes(total, DEFAULT) - 4 * GiB
    assert load_gate(total, 2 * GiB, room - 2 * GiB, DEFAULT).ok
    refused = load_gate(total, 2 * GiB, room - 2 * GiB + 1, DEFAULT)
    assert not refused.ok
    for number in ("2.00 GiB", "3.00 GiB", "1.00 GiB", "28.80 GiB"):
        assert number in refused.reason
    assert "exceed the memory cap" in refused.reason


def test_free_for_load_is_the_largest_model_the_gate_admits() -> None:
    total = 32 * GiB
    free = free_for_load_gb(total, 5 * GiB, DEFAULT)
    assert free == pytest.approx(28.8 - 5 - 3 - 1, abs=0.01)
    assert load_gate(total, 5 * GiB, int((free - 0.01) * GiB), DEFAULT).ok
    assert not load_gate(total, 5 * GiB, int((free + 0.01) * GiB), DEFAULT).ok
    assert free_for_load_gb(4 * GiB, 0, DEFAULT) == 0.0  # never negative


def test_kv_bytes_per_token_counts_keys_and_values_of_every_kv_head() -> None:
    llama8b = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    assert kv_bytes_per_token(llama8b) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in fp16
    assert kv_bytes_per_token({**llama8b, "head_dim": 64}, dtype_bytes=4) == 2 * 32 * 8 * 64 * 4
    assert kv_token_budget(GiB, 131072, ceiling=100_000) == 8192
    assert kv_token_budget(GiB, 131072, ceiling=4096) == 4096
