"""Where the terminal apps find the coordinator: flags, then environment, then the home's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darkbloom.client.config import DEFAULT_URL, resolve_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DARKBLOOM_URL", "DARKBLOOM_API_KEY", "DARKBLOOM_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.json").write_text(json.dumps({"url": "http://127.0.0.1:9999", "api_key": "dbk-file"}))
    (tmp_path / "admin_key").write_text("dba-file\n")
    return tmp_path


def test_flags_beat_environment_beats_config_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = resolve_settings(home)
    assert (s.url, s.api_key, s.admin_key) == ("http://127.0.0.1:9999", "dbk-file", "dba-file")
    monkeypatch.setenv("DARKBLOOM_URL", "http://127.0.0.1:7000")
    monkeypatch.setenv("DARKBLOOM_API_KEY", "dbk-env")
    monkeypatch.setenv("DARKBLOOM_ADMIN_KEY", "dba-env")
    s = resolve_settings(home)
    assert (s.url, s.api_key, s.admin_key, s.url_source) == (
        "http://127.0.0.1:7000",
        "dbk-env",
        "dba-env",
        "DARKBLOOM_URL",
    )
    s = resolve_settings(home, "http://127.0.0.1:1", "dbk-flag", "dba-flag")
    assert (s.url, s.api_key, s.admin_key) == ("http://127.0.0.1:1", "dbk-flag", "dba-flag")


def test_the_local_admin_key_file_is_never_offered_to_a_remote_coordinator(home: Path) -> None:
    assert resolve_settings(home, url="https://coordinator.example.com").admin_key is None
    assert resolve_settings(home, url="localhost:8420").admin_key == "dba-file"
    assert resolve_settings(home, use_admin=False).admin_key is None


def test_nothing_configured_means_the_default_local_coordinator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DARKBLOOM_URL", "DARKBLOOM_API_KEY", "DARKBLOOM_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.json").write_text("{not json")
    s = resolve_settings(tmp_path)
    assert (s.url, s.api_key, s.admin_key) == (DEFAULT_URL, None, None)
