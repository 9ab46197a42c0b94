"""What the dashboard knows, and how it words it: pure state and formatters, no widgets.

``DashboardData`` folds the coordinator's event stream (``snapshot``,
``request``, ``node``) into the current view; the screens only read it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, Protocol

FEED_SIZE = 500


class EventSource(Protocol):
    """Where the dashboard's events come from (the coordinator, or a fixed list)."""

    url: str

    def events(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]: ...


class FixedSource:
    """A fixed sequence of events, then silence: for snapshot tests and offline demos."""

    def __init__(self, events: Iterable[tuple[str, dict[str, Any]]], url: str = "fixed data") -> None:
        self._events = list(events)
        self.url = url

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for event in self._events:
            yield event
        await asyncio.Event().wait()


def _key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (rec.get("ts"), rec.get("id") or rec.get("model"), rec.get("status"))


class DashboardData:
    """The current dashboard state, built from the event stream."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_SIZE)
        self._seen: deque[tuple[Any, ...]] = deque(maxlen=FEED_SIZE)
        self.version = 0
        self.added = 0  # requests ever added to the feed, so a table can append only the new ones

    @property
    def admin(self) -> bool:
        return bool(self.snapshot and self.snapshot.get("view") == "admin")

    @property
    def models(self) -> list[dict[str, Any]]:
        return list(self.snapshot.get("models", [])) if self.snapshot else []

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.snapshot.get("stats", {})) if self.snapshot else {}

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        """Fold one event in."""
        if kind == "snapshot":
            self.snapshot = {**data, "stats": dict(data.get("stats", {}))}  # local counting must not touch the event
            self.nodes = {n["id"]: n for n in data.get("nodes", [])}
            for rec in data.get("recent", []):
                self._add_request(rec)
        elif kind == "request":
            if self._add_request(data) and self.snapshot is not None:
                # Totals move with the feed; the next snapshot (at most seconds away) corrects them.
                stats = self.snapshot.setdefault("stats", {})
                stats["requests"] = stats.get("requests", 0) + 1
                stats["tokens_served"] = stats.get("tokens_served", 0) + int(data.get("completion_tokens") or 0)
        elif kind == "node":
            node_id, view = data.get("node"), data.get("view")
            if data.get("kind") == "left" or view is None:
                self.nodes.pop(node_id, None)  # type: ignore[arg-type]
            else:
                self.nodes[view["id"]] = view
        self.version += 1

    def _add_request(self, rec: dict[str, Any]) -> bool:
        """Add a finished request to the feed unless it is already there; True if it was new."""
        key = _key(rec)
        if key in self._seen:
            return False
        self._seen.append(key)
        self.feed.append(rec)
        self.added += 1
        return True

    def node_requests(self, node_id: str) -> list[dict[str, Any]]:
        return [r for r in self.feed if r.get("node") == node_id]


# ---- formatters --------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def dash(value: Any) -> bool:
    return value is None or value == ""


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def fmt_cost(micro_usd: int | None) -> str:
    if micro_usd is None:
        return "—"
    return f"${micro_usd / 1e6:,.4f}" if micro_usd < 1_000_000 else f"${micro_usd / 1e6:,.2f}"


def short_id(request_id: str | None) -> str:
    """A request id without its API prefix (``chatcmpl-``), cut to 12 characters: enough to tell rows apart."""
    if not request_id:
        return "—"
    for sep in ("-", "_"):
        if sep in request_id:
            request_id = request_id.split(sep, 1)[1]
            break
    return request_id if len(request_id) <= 12 else request_id[:12] + "…"


def fmt_clock(ts: float | None) -> str:
    """Local wall-clock time of day."""
    return "—" if not ts else time.strftime("%H:%M:%S", time.localtime(ts))


def fmt_pct(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio * 100:.1f}%"


def fmt_status(status: int | None, outcome: str | None = None) -> str:
    if status == 200:
        return "ok"
    if status == 499 or outcome == "cancelled":
        return "cancelled"
    return "—" if status is None else str(status)


def slot_summary(slots: list[dict[str, Any]]) -> str:
    """``model state running/max``, one line per slot."""
    return "\n".join(f"{s['model']} {s['state']} {s['running']}/{s['max']}" for s in slots) or "—"


def trust_label(node: dict[str, Any]) -> str:
    level, status = node.get("trust_level"), node.get("trust_status")
    if dash(level):
        return "—"
    return f"{level} ({status})" if status and status != "trusted" else str(level)


SortKey = Callable[[dict[str, Any]], Any]

FLEET_COLUMNS: list[tuple[str, str, SortKey]] = [
    ("node", "Node", lambda n: n["id"]),
    ("trust", "Trust", lambda n: n.get("trust_level") or ""),
    (
        "attested",
        "Attested",
        lambda n: n.get("attestation_age_s") if n.get("attestation_age_s") is not None else float("inf"),
    ),
    ("slots", "Models and slots", lambda n: slot_summary(n.get("slots", []))),
    ("active", "Active", lambda n: (n.get("active", 0), n.get("max", 0))),
    ("tps", "tok/s", lambda n: n.get("decode_tps") or 0.0),
    ("free", "Free GB", lambda n: n.get("free_for_load_gb") if n.get("free_for_load_gb") is not None else -1.0),
    ("heartbeat", "Heartbeat", lambda n: n.get("heartbeat_age_s") or 0.0),
]
"""Fleet table columns: key, header, sort key."""


def fleet_row(n: dict[str, Any]) -> tuple[str, ...]:
    return (
        n["id"],
        trust_label(n),
        "—" if n.get("attestation_age_s") is None else fmt_age(n["attestation_age_s"]) + " ago",
        slot_summary(n.get("slots", [])),
        f"{n.get('active', 0)}/{n.get('max', 0)}",
        fmt_num(n.get("decode_tps")),
        fmt_num(n.get("free_for_load_gb")),
        fmt_age(n.get("heartbeat_age_s")) + " ago",
    )


FEED_COLUMNS = ("Time", "Request", "Model", "Node", "TTFT", "tok/s", "Tokens", "Cost", "Status", "Privacy")


def feed_row(r: dict[str, Any]) -> tuple[str, ...]:
    return (
        fmt_clock(r.get("ts")),
        short_id(r.get("id")),
        str(r.get("model") or "—"),
        str(r.get("node") or "—"),
        fmt_num(r.get("ttft_ms"), 0, " ms"),
        fmt_num(r.get("tokens_per_s")),
        fmt_int(r.get("completion_tokens")),
        fmt_cost(r.get("cost_micro_usd")),
        fmt_status(r.get("status"), r.get("outcome")),
        str(r.get("privacy") or "—"),
    )
