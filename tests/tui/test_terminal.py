"""The installed ``darkbloom chat`` and ``darkbloom tui`` commands as a user runs them: terminal, script, pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pexpect

from tests.tui.conftest import LiveNetwork

REPO = Path(__file__).resolve().parents[2]
DARKBLOOM = Path(sys.executable).parent / "darkbloom"  # the console script the package installs
PROMPT = "what is the capital of france?"
ANSI = re.compile(  # CSI, OSC, DCS/PM/APC strings, two-byte escapes, charset selection
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[@-Z\\-_]|\x1b[()][0-9A-Za-z]"
)


def _env(live: LiveNetwork, home: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "DARKBLOOM_HOME": str(home),
        "DARKBLOOM_URL": live.url,
        "DARKBLOOM_API_KEY": live.key,
        "TERM": "xterm-256color",
        "DARKBLOOM_ADMIN_KEY": "",
    }


class Terminal:
    """A command in a pseudo-terminal, and everything it has drawn so far as plain text."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.child = pexpect.spawn(
            str(DARKBLOOM), args, env=env, dimensions=(40, 120), encoding="utf-8", codec_errors="replace", timeout=30
        )
        self.screen = ""

    def read_until(self, check: Callable[[str], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.screen += ANSI.sub("", self.child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                pass
            if check(self.screen):
                return
        raise AssertionError(f"{what}; the terminal showed:\n{self.screen[-3000:]}")


def _reference(live: LiveNetwork, max_tokens: int) -> str:
    """The same question through the API, greedy: what the command must print."""
    body = {
        "model": live.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    resp = httpx.post(
        f"{live.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {live.key}"}, timeout=60
    )
    return str(resp.json()["choices"][0]["message"]["content"])


def test_one_shot_prints_the_streamed_answer_as_an_argument_and_from_a_pipe(live: LiveNetwork, tmp_path: Path) -> None:
    env = _env(live, tmp_path)
    expected = _reference(live, 16) + "\n"
    args = [str(DARKBLOOM), "chat", "-m", live.model, "--temperature", "0", "--max-tokens", "16"]
    arg = subprocess.run([*args, PROMPT], env=env, capture_output=True, text=True, timeout=60)
    assert arg.returncode == 0, arg.stderr
    assert arg.stdout == expected
    piped = subprocess.run(args, input=PROMPT + "\n", env=env, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected
    refused = subprocess.run(
        [*args, "--api-key", "dbk-not-a-key", PROMPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert "refused the key" in refused.stderr
    typo = subprocess.run([*args, "-m", live.model + "x", PROMPT], env=env, capture_output=True, text=True, timeout=60)
    assert typo.returncode == 1 and typo.stdout == ""
    assert f"model '{live.model}x' is not served on {live.url}; served: {live.model}" in typo.stderr, typo.stderr


def test_interactive_chat_in_a_terminal_streams_the_answer_onto_the_screen(live: LiveNetwork, tmp_path: Path) -> None:
    env = _env(live, tmp_path)
    answer_words = set(re.findall(r"[A-Za-z]{4,}", _reference(live, 16)))
    term = Terminal(["chat", "-m", live.model, "--temperature", "0", "--max-tokens", "16"], env)
    try:
        term.read_until(lambda s: "Type a message" in s, "the chat never drew its prompt")
        term.child.send(PROMPT)
        term.child.send("\r")
        term.read_until(lambda s: "16 tokens ·" in s, "the answer's stats line never appeared")
        term.read_until(
            lambda s: all(w in s for w in answer_words), f"the answer's words {sorted(answer_words)} never all appeared"
        )
        assert "sealed" in term.screen and "coordinator-visible" not in term.screen  # sealed by default
        term.child.send("\x11")  # Ctrl+Q
        term.child.expect(pexpect.EOF, timeout=15)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0
    listed = subprocess.run([str(DARKBLOOM), "chat", "--list"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and PROMPT in listed.stdout and live.model in listed.stdout


def test_dashboard_in_a_terminal_shows_the_fleet_and_switches_screens(live: LiveNetwork, tmp_path: Path) -> None:
    env = {**_env(live, tmp_path), "DARKBLOOM_ADMIN_KEY": live.admin_key}
    term = Terminal(["tui"], env)
    try:
        term.read_until(lambda s: live.node_id in s and "admin view" in s, "the fleet never showed the node")
        term.child.send("n")
        term.read_until(lambda s: "Tokens served" in s, "n did not open the network stats")
        term.child.send("q")
        term.child.expect(pexpect.EOF, timeout=15)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0
