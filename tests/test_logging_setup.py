"""Structured logs: JSON lines off a terminal, key=value on one, the request id on every line, no keys."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from darkbloom.logging_setup import mask_secrets, request_id_var, set_request_id, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    token = set_request_id("chatcmpl-abc")
    try:
        logging.getLogger("darkbloom.test").info("served %d tokens", 5, extra={"model": "m1"})
    finally:
        request_id_var.reset(token)
    logging.getLogger("darkbloom.test").warning("no request here")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "served 5 tokens" and first["level"] == "info" and first["logger"] == "darkbloom.test"
    assert first["request_id"] == "chatcmpl-abc" and first["model"] == "m1"
    assert "request_id" not in second


def test_key_value_on_a_terminal(restore_logging: None) -> None:
    out = Tty()
    setup_logging(stream=out)
    token = set_request_id("chatcmpl-xyz")
    try:
        logging.getLogger("darkbloom.test").info(
            "http request", extra={"route": "/v1/chat/completions", "status": 200, "note": "two words"}
        )
    finally:
        request_id_var.reset(token)
    line = out.getvalue().strip()
    assert "darkbloom.test: http request" in line
    assert "request_id=chatcmpl-xyz" in line and "status=200" in line and 'note="two words"' in line


def test_keys_are_masked_even_if_someone_logs_one(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(stream=out, json_lines=True)
    logging.getLogger("darkbloom.test").info(
        "auth header was Bearer dbk-0123456789abcdefXYZ and admin dba-AAAAAAAAAAAAAAAA"
    )
    text = out.getvalue()
    assert "0123456789abcdef" not in text and "AAAAAAAAAAAAAAAA" not in text
    assert mask_secrets("key dbk-short") == "key dbk-short"  # too short to be a key: left alone


def test_a_password_in_a_url_is_masked() -> None:
    text = "cannot connect to postgresql://app:s3cret-pw@db.internal:5432/prod: timeout"
    assert mask_secrets(text) == "cannot connect to postgresql://app:***@db.internal:5432/prod: timeout"
    assert mask_secrets("postgresql://app@db.internal/prod") == "postgresql://app@db.internal/prod"  # no password
    assert mask_secrets("see https://example.com:8443/docs") == "see https://example.com:8443/docs"  # a port, not a password


def test_env_forces_the_format(restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKBLOOM_LOG_FORMAT", "json")
    out = Tty()
    setup_logging(stream=out)
    logging.getLogger("darkbloom.test").info("hello")
    assert json.loads(out.getvalue())["msg"] == "hello"
