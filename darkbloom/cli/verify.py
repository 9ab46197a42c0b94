"""``darkbloom verify``: check a node-signed receipt offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from darkbloom.cli.common import fail


def verify(
    receipt: Annotated[
        str, typer.Argument(help="A receipt file, '-' for stdin, or the receipt itself (JSON or base64 JSON).")
    ],
    request_hash: Annotated[
        str | None, typer.Option("--sealed-hash", help="Require this sealed-request hash (hex).", show_default=False)
    ] = None,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Require this request id.", show_default=False)
    ] = None,
    node_key: Annotated[
        str | None, typer.Option("--node-key", help="Require this node signing key (base64).", show_default=False)
    ] = None,
) -> None:
    """Verify a receipt against the node's attested key, with no network."""
    from darkbloom.client.receipts import load_receipt, verify_receipt_doc
    from darkbloom.protocol.sealed import AttestationError

    try:
        text = _receipt_text(receipt)
    except OSError as exc:
        fail(f"cannot read the receipt file {receipt}: {exc.strerror or exc}")
        return
    try:
        payload = verify_receipt_doc(
            load_receipt(text),
            expect_signing_key=node_key,
            expect_sealed_hash=request_hash,
            expect_request_id=request_id,
        )
    except AttestationError as exc:
        fail(f"receipt rejected: {exc}")
        return
    typer.echo("receipt OK: signed by the node's attested key")
    for name in (
        "request_id",
        "node_id",
        "model",
        "weight_hash",
        "sealed_request_hash",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "timestamp",
    ):
        typer.echo(f"  {name}: {getattr(payload, name)}")


def _receipt_text(receipt: str) -> str:
    """The receipt's text: from stdin (``-``), from a file of that name, else the argument itself."""
    if receipt == "-":
        return sys.stdin.read()
    path = Path(receipt)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # too long for a file name (a pasted X-Darkbloom-Receipt header), or a NUL in it
        is_file = False
    return path.read_text() if is_file else receipt
