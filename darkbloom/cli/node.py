"""``darkbloom node``: run a provider node, and its verbs (start, stop, status, models, benchmark, doctor)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from darkbloom import aio
from darkbloom.cli import node_update
from darkbloom.cli.common import HomeOption, fail, setup_logging
from darkbloom.server.settings import darkbloom_home

app = typer.Typer(
    help="Run and manage a provider node. With no command it serves in the foreground: Ctrl-C lets the "
    "requests in flight finish (up to 10 s), and a second Ctrl-C stops it at once.",
    invoke_without_command=True,
)
app.command("update")(node_update.update)
models_app = typer.Typer(help="List local models, or import a GGUF file.", invoke_without_command=True)
app.add_typer(models_app, name="models")

CoordinatorOption = Annotated[
    str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
]
ModelOption = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--model", "-m", help="Local MLX model directory to serve (repeatable; default: every model the scan finds)."
    ),
]
ConcurrencyOption = Annotated[int, typer.Option(help="Most sequences decoding at once per model.", min=1)]
SlotsOption = Annotated[int, typer.Option(help="Most models loaded at once.", min=1)]
IdleOption = Annotated[float, typer.Option(help="Unload a model after this many seconds unused.", min=1.0)]


def _node_args(
    coordinator: str, model: list[Path] | None, max_concurrency: int, max_slots: int, idle_unload: float
) -> list[str]:
    args = [
        "--coordinator",
        coordinator,
        "--max-concurrency",
        str(max_concurrency),
        "--max-slots",
        str(max_slots),
        "--idle-unload",
        str(idle_unload),
    ]
    for m in model or ():
        args += ["--model", str(m.expanduser().resolve())]
    return args


@app.callback()
def node(
    ctx: typer.Context,
    coordinator: CoordinatorOption = "http://127.0.0.1:8420",
    model: ModelOption = None,
    max_concurrency: ConcurrencyOption = 8,
    max_slots: SlotsOption = 3,
    idle_unload: IdleOption = 3600.0,
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve local MLX models to a coordinator (runs in the foreground).

    Ctrl-C (or SIGTERM) stops it gracefully: no new requests are routed here
    and those in flight finish, for up to 10 s; press Ctrl-C again to stop at
    once. `darkbloom node start` runs it in the background instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    from darkbloom.node.runner import NodeConfig, NodeStartError, end_process, run_node

    setup_logging(verbose)
    cfg = NodeConfig(
        coordinator=coordinator,
        model_paths=tuple(model or ()),
        home=darkbloom_home(home),
        max_concurrency=max_concurrency,
        max_slots=max_slots,
        idle_unload_s=idle_unload,
    )
    # `darkbloom node stop` sends SIGTERM: unwind like Ctrl-C so engines close and the socket says goodbye.
    # Once the node is serving, SIGTERM and Ctrl-C first let its requests finish (run_node's drain_on_sigterm).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        aio.run(run_node(cfg, say=lambda m: typer.echo(m, err=True), drain_on_sigterm=True))
    except NodeStartError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    end_process()  # stopped cleanly: exit 0 without the interpreter's teardown (see end_process)


@app.command("login")
def login(
    coordinator: Annotated[
        str, typer.Option("--coordinator", "-c", envvar="DARKBLOOM_COORDINATOR", help="Coordinator base URL.")
    ] = "http://127.0.0.1:8420",
    home: HomeOption = None,
) -> None:
    """Link this node to your account (device code); its provider token is saved 0600 under the home."""
    from darkbloom.client.device import DeviceLoginError, login as device_login

    try:
        account, path = device_login(coordinator, darkbloom_home(home), say=lambda m: typer.echo(m, err=True))
    except (DeviceLoginError, OSError) as exc:
        fail(str(exc))
        return
    typer.echo(f"linked to account {account}; provider token saved to {path}")


@app.command()
def start(
    coordinator: CoordinatorOption = "http://127.0.0.1:8420",
    model: ModelOption = None,
    max_concurrency: ConcurrencyOption = 8,
    max_slots: SlotsOption = 3,
    idle_unload: IdleOption = 3600.0,
    home: HomeOption = None,
) -> None:
    """Start the node in the background (pid file and log under the darkbloom home)."""
    from darkbloom.node.daemon import DaemonError, log_file
    from darkbloom.node.daemon import start as start_daemon

    where = darkbloom_home(home)
    try:
        pid = start_daemon(where, _node_args(coordinator, model, max_concurrency, max_slots, idle_unload))
    except DaemonError as exc:
        fail(str(exc))
        return
    typer.echo(f"node started, pid {pid}; log {log_file(where)}; `darkbloom node status` to follow it")


@app.command()
def stop(home: HomeOption = None) -> None:
    """Stop the background node; it finishes the requests it is serving first (up to 10 s)."""
    from darkbloom.node.daemon import NODE_DRAIN_S, running_pid, stop as stop_daemon

    where = darkbloom_home(home)
    if (running := running_pid(where)) is not None:
        typer.echo(f"stopping node {running}: it finishes the requests it is serving first (up to {NODE_DRAIN_S:.0f} s) ...", err=True)
    pid = stop_daemon(where)
    typer.echo(f"node {pid} stopped" if pid else f"no node is running from {where}")


@app.command()
def status(home: HomeOption = None) -> None:
    """Is the background node running; its slots, memory and last log lines."""
    from darkbloom.node.daemon import format_status
    from darkbloom.node.daemon import status as node_status

    where = darkbloom_home(home)
    st = node_status(where)
    typer.echo(format_status(st, where))
    if st.pid is None:
        raise typer.Exit(1)


@models_app.callback()
def models(
    ctx: typer.Context,
    sha256: Annotated[
        bool, typer.Option("--hash", help="Also print each model's weight SHA-256 (cached by path, size, mtime).")
    ] = False,
    home: HomeOption = None,
) -> None:
    """List the models the scan finds (darkbloom models dir and the Hugging Face cache)."""
    if ctx.invoked_subcommand is not None:
        return
    from darkbloom.node.models.scan import scan, weight_hash

    entries = scan(darkbloom_home(home))
    if not entries:
        typer.echo(f"no models found under {darkbloom_home(home) / 'models'} or the Hugging Face cache")
        return
    for e in entries:
        if e.info is None:
            typer.echo(f"BROKEN  {e.path}: {e.error}")
        else:
            tpl = "template ok" if e.info.template_render_ok else f"TEMPLATE FAILS ({e.error})"
            typer.echo(
                f"{e.info.id:<36} {e.info.size_bytes / 2**30:7.2f} GiB  {e.info.quantization or '?':<8} {tpl}  [{e.source}] {e.path}"
            )
            if sha256:
                typer.echo(f"{'':<36} {weight_hash(e.path, darkbloom_home(home) / 'cache' / 'weight-hashes.json')}")


@models_app.command("import")
def import_model(
    file: Annotated[Path, typer.Argument(help="A llama-architecture .gguf file.")],
    name: Annotated[Optional[str], typer.Option(help="Model id (default: the file name).")] = None,
    dequantize: Annotated[
        Optional[bool],
        typer.Option(
            "--dequantize/--keep-quantized",
            help="float32 weights (default on a CPU when RAM allows) or quantized.",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Convert a GGUF file into an MLX model directory under <home>/models."""
    from darkbloom.node.hardware import physical_memory_bytes
    from darkbloom.node.models.demo import metal_available, should_dequantize
    from darkbloom.node.models.gguf_import import GGUFImportError, import_gguf

    model_id = name or file.stem
    dest = darkbloom_home(home) / "models" / model_id.replace("/", "--")
    if dequantize is None:
        dequantize = file.is_file() and should_dequantize(
            file.stat().st_size, physical_memory_bytes(), metal=metal_available()
        )
    try:
        result = import_gguf(file, dest, name=model_id, dequantize=dequantize, say=lambda m: typer.echo(m, err=True))
    except GGUFImportError as exc:
        fail(str(exc))
        return
    typer.echo(f"imported {result.model_id} ({result.weight_format}) into {result.path}")


@app.command()
def benchmark(
    model: Annotated[
        Optional[Path], typer.Option("--model", "-m", help="Model directory (default: the first the scan finds).")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrencies.")] = "1,4,8",
    max_tokens: Annotated[int, typer.Option(help="Tokens generated per stream.")] = 64,
    home: HomeOption = None,
) -> None:
    """Measure prefill and decode tokens/s at several concurrencies (in-process, no coordinator)."""
    from darkbloom.node.benchmark import format_rows, run_benchmark
    from darkbloom.node.models.scan import scan

    if model is None:
        found = [e for e in scan(darkbloom_home(home)) if e.servable]
        if not found:
            fail("no model found; pass --model PATH or import one with `darkbloom node models import`")
            return
        model = found[0].path
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
    except ValueError:
        fail(f"--concurrency takes numbers like 1,4,8, not {concurrency!r}")
        return
    if not levels or min(levels) < 1:
        fail("--concurrency needs at least one positive number")
        return
    typer.echo(
        f"benchmarking {model} at concurrency {', '.join(map(str, levels))}, {max_tokens} tokens per stream", err=True
    )
    with typer.progressbar(length=len(levels), label="benchmark", file=None) as bar:
        rows = asyncio.run(run_benchmark(model, levels, max_tokens, progress=bar.update))
    typer.echo(format_rows(rows))


@app.command()
def doctor(
    coordinator: CoordinatorOption = "http://127.0.0.1:8420",
    home: HomeOption = None,
) -> None:
    """Check MLX, BLAS, memory, model directories and the coordinator; say what to fix."""
    from darkbloom.node.doctor import format_report, run_doctor

    checks = run_doctor(darkbloom_home(home), coordinator)
    typer.echo(format_report(checks))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
