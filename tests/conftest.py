"""Fixtures shared across the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# No per-example deadline: CI shares two cores with real model and server
# processes, and a slow example is not a wrong one.
settings.register_profile("darkbloom", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("darkbloom")


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the node and server run on asyncio)."""
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama MLX model directory, built once per test session (~1 s)."""
    from darkbloom.node.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", name="tiny")
