"""Structured logs for every darkbloom process, with a request id that follows each request.

Off a terminal (a service manager, a container, a log shipper) each record is
one JSON object per line; on a terminal it is ``key=value`` pairs a person can
read. Either way a record carries the current ``request_id`` when there is
one: the coordinator sets it when it accepts a request, it travels to the node
inside the ``inference_request`` frame, and the node sets it while serving, so
one ``grep`` for the id finds the request in both processes' logs.

What is logged is ids, counts and timings: never prompt or completion text,
and never a key (anything shaped like a darkbloom key, or a password in a
URL, is masked as a last line of defence).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import IO, Any

import msgspec

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("darkbloom_request_id", default=None)
"""The id of the request the current task is working on (``None`` outside a request)."""

# darkbloom consumer keys (dbk-), admin keys (dba-), and bearer tokens in general.
_SECRET = re.compile(r"\b(db[ka]-)[A-Za-z0-9_\-]{8,}|(?i:(bearer\s+))[A-Za-z0-9_\-.=]{8,}")

# Attributes every LogRecord has; anything else came in through ``extra=`` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


# A password in a URL (a database URL in an error message): ``scheme://user:***@host``.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s/]+@")


def mask_secrets(text: str) -> str:
    """``text`` with anything shaped like a key, a bearer token or a URL's password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", _SECRET.sub(lambda m: (m.group(1) or m.group(2) or "") + "***", text))


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make ``request_id`` the current request's id for this task and the tasks it starts."""
    return request_id_var.set(request_id)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one log record, in a stable order: time, level, logger, message, request id, extras."""
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": mask_secrets(record.getMessage()),
    }
    rid = getattr(record, "request_id", None) or request_id_var.get()
    if rid:
        fields["request_id"] = rid
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key != "request_id" and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = mask_secrets(logging.Formatter().formatException(record.exc_info))
    return fields


# msgspec writes the same compact JSON as ``json.dumps(separators=(",", ":"))``, several times faster
# (two lines per request on the coordinator); anything it cannot encode is logged as ``str(value)``.
_json_line = msgspec.json.Encoder(enc_hook=str).encode


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for machines."""

    def format(self, record: logging.LogRecord) -> str:
        return _json_line(record_fields(record)).decode()


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts level logger: message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        head = f"{fields.pop('ts')[11:23]} {fields.pop('level'):<7} {fields.pop('logger')}: {fields.pop('msg')}"
        exc = fields.pop("exc", None)
        line = " ".join([head, *(f"{k}={_kv(v)}" for k, v in fields.items())])
        return f"{line}\n{exc}" if exc else line


def setup_logging(verbose: bool = False, *, stream: IO[str] | None = None, json_lines: bool | None = None) -> None:
    """Route every logger (ours, uvicorn's) through one structured handler on stderr.

    Args:
        verbose: Debug level (else ``$DARKBLOOM_LOG_LEVEL``, default INFO).
        stream: Where to write (stderr by default).
        json_lines: Force JSON (True) or key=value (False); by default JSON
            unless the stream is a terminal. ``$DARKBLOOM_LOG_FORMAT`` (json|text) overrides.
    """
    stream = stream or sys.stderr
    fmt = os.environ.get("DARKBLOOM_LOG_FORMAT", "").lower()
    if json_lines is None:
        json_lines = fmt == "json" or (fmt != "text" and not (hasattr(stream, "isatty") and stream.isatty()))
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("DARKBLOOM_LOG_LEVEL", "INFO").upper(), logging.INFO)
    )
    # No formatter here prints the pid, thread, process name or the caller's file and line: skip
    # gathering them for every record (the getpid() system call, and a walk up the stack per record).
    # These are the switches the logging HOWTO's "Optimization" section names.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if json_lines else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own handlers; send its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
