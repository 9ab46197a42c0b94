"""A server's port, bound before any slow start-up: a taken port is one clear error, at once.

``darkbloom serve``, ``up`` and ``proxy`` bind their socket here and hand it to
uvicorn (``Server.run(sockets=[...])``), instead of letting uvicorn bind it
after start-up and exit with only a log line.
"""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The port cannot be had (in use, or not this process's to bind)."""


def listen(host: str, port: int, *, hint: str = "pass --port to pick another") -> socket.socket:
    """A socket bound to ``host:port``, for uvicorn to listen and serve on.

    Raises:
        ListenError: the port is taken (the message ends with ``hint``) or cannot be bound.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is in use ({exc.strerror}); {hint}") from None
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
