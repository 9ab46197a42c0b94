"""The ``darkbloom`` command."""

from __future__ import annotations

import typer

from darkbloom.cli import admin, chat, device, keys, node, proxy, serve, sim, tui, up, verify

app = typer.Typer(
    name="darkbloom",
    help="Darkbloom: a decentralized private inference network.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("up")(up.up)
app.command("sim")(sim.sim)
app.command("tui")(tui.tui)
app.command("chat")(chat.chat)
app.command("proxy")(proxy.proxy)
app.command("verify")(verify.verify)
app.add_typer(node.app, name="node")
app.add_typer(keys.app, name="keys")
app.add_typer(admin.app, name="admin")
app.add_typer(device.app, name="device")

if __name__ == "__main__":
    app()
