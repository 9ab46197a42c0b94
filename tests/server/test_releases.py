"""Node releases: admin registration, latest per platform, 404 when none, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from darkbloom.server.app import create_app
from darkbloom.server.auth.admin import read_admin_key
from darkbloom.server.settings import Settings
from darkbloom.server.store import Store
from tests.server.store.conftest import store_factory  # noqa: F401  (both-backends fixture)

SHA = "ab" * 32


def release(version: str, platform: str = "linux-x86_64", sha: str = SHA) -> dict[str, str]:
    return {
        "version": version,
        "platform": platform,
        "url": f"https://dl.example/darkbloom-{version}-py3-none-any.whl",
        "sha256": sha,
    }


@pytest.fixture
def app_client(tmp_path: Path, store_factory: Callable[[], Store]) -> Iterator[tuple[TestClient, dict[str, str]]]:  # noqa: F811
    settings = Settings(home=tmp_path / "home")
    with TestClient(create_app(settings, store=store_factory())) as client:
        admin = {"Authorization": f"Bearer {read_admin_key(settings.home)}"}
        yield client, admin


def test_register_then_latest_then_404(app_client: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = app_client
    missing = client.get("/v1/releases/latest", params={"platform": "linux-x86_64"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "release_not_found"

    for version in ("0.2.0", "0.10.0", "0.9.1"):
        created = client.post("/v1/releases", json=release(version), headers=admin)
        assert created.status_code == 201, created.text
    client.post("/v1/releases", json=release("1.0.0", platform="macos-arm64"), headers=admin)

    latest = client.get("/v1/releases/latest", params={"platform": "linux-x86_64"}).json()
    assert (latest["version"], latest["platform"], latest["sha256"]) == (
        "0.10.0",
        "linux-x86_64",
        SHA,
    )  # 0.10 > 0.9, not by string
    assert client.get("/v1/releases/latest", params={"platform": "macos-arm64"}).json()["version"] == "1.0.0"
    assert client.get("/v1/releases/latest", params={"platform": "linux-aarch64"}).status_code == 404

    client.post("/v1/releases", json=release("0.11.0", platform="any"), headers=admin)
    assert client.get("/v1/releases/latest", params={"platform": "linux-aarch64"}).json()["version"] == "0.11.0"


def test_registering_needs_the_admin_credential(app_client: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = app_client
    assert client.post("/v1/releases", json=release("0.2.0")).status_code == 401
    assert (
        client.post("/v1/releases", json=release("0.2.0"), headers={"Authorization": "Bearer dbk-nope"}).status_code
        == 403
    )
    assert client.get("/v1/releases/latest", params={"platform": "linux-x86_64"}).status_code == 404


def test_same_release_twice_is_idempotent_but_a_changed_hash_conflicts(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = app_client
    assert client.post("/v1/releases", json=release("0.2.0"), headers=admin).status_code == 201
    assert client.post("/v1/releases", json=release("0.2.0"), headers=admin).status_code == 200
    clash = client.post("/v1/releases", json=release("0.2.0", sha="cd" * 32), headers=admin)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "release_exists"
    assert client.get("/v1/releases/latest", params={"platform": "linux-x86_64"}).json()["sha256"] == SHA


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**release("0.2.0"), "version": "not a version"}, "version"),
        ({**release("0.2.0"), "sha256": "abc"}, "sha256"),
        ({**release("0.2.0"), "url": "ftp://x/y.whl"}, "url"),
        ({**release("0.2.0"), "platform": "Linux X86"}, "platform"),
        ({k: v for k, v in release("0.2.0").items() if k != "url"}, "url"),
    ],
)
def test_bad_release_bodies_get_a_400_naming_the_field(
    app_client: tuple[TestClient, dict[str, str]], body: dict, param: str
) -> None:  # type: ignore[type-arg]
    client, admin = app_client
    resp = client.post("/v1/releases", json=body, headers=admin)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param


def test_latest_without_a_platform_and_non_json_bodies_are_400s(app_client: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = app_client
    assert client.get("/v1/releases/latest").status_code == 400
    assert client.post("/v1/releases", content=b"{nope", headers=admin).status_code == 400
    assert client.post("/v1/releases", json=[1, 2], headers=admin).status_code == 400
