"""``darkbloom tui``: the operator dashboard app.

Four screens (fleet, routing, live feed, network stats) as Textual modes,
fed by one worker that follows the coordinator's event stream and
reconnects with backoff. Screens redraw at most four times a second.
"""

from __future__ import annotations

import asyncio
import contextlib

from textual import work
from textual.app import App
from textual.binding import Binding

from darkbloom.client.http import ApiError, NotAuthorised, Unreachable
from darkbloom.tui.dashboard.base import DashboardScreen
from darkbloom.tui.dashboard.data import DashboardData, EventSource, plural
from darkbloom.tui.dashboard.feed import FeedScreen
from darkbloom.tui.dashboard.fleet import FleetScreen
from darkbloom.tui.dashboard.routing import RoutingScreen
from darkbloom.tui.dashboard.stats import StatsScreen

CSS = """
#banner { background: $error; color: $text; padding: 0 1; display: none; }
.title { padding: 0 1; color: $text-muted; }
.section { padding: 1 1 0 1; text-style: bold; }
DataTable { height: 1fr; }
#slots { height: auto; max-height: 12; }
.model-panel { border: round $primary; height: auto; padding: 0 1; margin: 0 1; }
.model-stats { height: auto; }
.spark-row { height: 1; }
.spark-label { width: 18; color: $text-muted; }
Sparkline { width: 1fr; }
#cards { grid-size: 3; grid-rows: 6; grid-gutter: 1 2; padding: 1 2; height: auto; }
.card { border: round $primary; height: 6; content-align: center middle; text-align: center; }
"""

RECONNECT_MAX_S = 10.0


class DashboardApp(App[None]):
    """The dashboard.

    Args:
        source: Where events come from: a ``DarkbloomClient`` (live) or a ``FixedSource``.
        theme: ``textual-dark`` or ``textual-light``.
    """

    TITLE = "darkbloom"
    CSS = CSS
    MODES = {"fleet": FleetScreen, "routing": RoutingScreen, "feed": FeedScreen, "stats": StatsScreen}
    DEFAULT_MODE = "fleet"
    BINDINGS = [
        Binding("f", "switch_mode('fleet')", "Fleet"),
        Binding("r", "switch_mode('routing')", "Routing"),
        Binding("l", "switch_mode('feed')", "Live feed"),
        Binding("n", "switch_mode('stats')", "Network"),
        Binding("t", "toggle_theme", "Theme"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: EventSource, *, theme: str = "textual-dark") -> None:
        super().__init__()
        self.source = source
        self.data = DashboardData()
        self.problem: str | None = None
        self._start_theme = theme
        self._shown = -1

    def on_mount(self) -> None:
        self.theme = self._start_theme
        self.sub_title = f"{self.source.url} · connecting"
        self.set_interval(0.25, self.redraw)
        self.follow()

    async def on_unmount(self) -> None:
        # The client's connections belong to this event loop: close them before it ends.
        close = getattr(self.source, "aclose", None)
        if close is not None:
            await close()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def redraw(self, force: bool = False) -> None:
        """Redraw the visible screen if anything changed since the last time."""
        if not force and self.data.version == self._shown:
            return
        screen = self.screen
        if isinstance(screen, DashboardScreen) and screen.is_mounted and screen.show(self.data):
            self._shown = self.data.version  # else its widgets are still mounting: the next tick draws it

    def _update_sub_title(self) -> None:
        if self.data.admin:
            nodes, view = len(self.data.nodes), "admin view"
        else:
            nodes, view = int(self.data.stats.get("active_nodes", 0)), "public view"
        self.sub_title = f"{self.source.url} · {view} · {plural(nodes, 'node')}"

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            self.redraw(force=True)

    @work(exclusive=True, group="events")
    async def follow(self) -> None:
        """Follow the event stream for as long as the app runs, reconnecting with backoff."""
        delay = 1.0
        while True:
            try:
                events = self.source.events()
                async with contextlib.aclosing(events):
                    async for kind, data in events:
                        self.data.apply(kind, data)
                        if kind == "snapshot":
                            self._update_sub_title()
                            self._set_problem(None)
                            self.redraw()  # the first picture should not wait for the timer
                        delay = 1.0
                problem = (
                    f"The coordinator at {self.source.url} closed the event stream; reconnecting in {delay:.0f} s."
                )
            except NotAuthorised as exc:
                self.sub_title = f"{self.source.url} · not authorised"
                self._set_problem(
                    f"Not authorised: {exc}. The fleet view needs the admin credential "
                    "(--admin-key or DARKBLOOM_ADMIN_KEY); "
                    "a consumer key (--api-key or DARKBLOOM_API_KEY) shows the public view."
                )
                return
            except Unreachable as exc:
                problem = (
                    f"Cannot reach the coordinator: {exc}. Retrying in {delay:.0f} s "
                    "(is it running? check --url or DARKBLOOM_URL)."
                )
            except ApiError as exc:
                problem = f"The coordinator refused: {exc} ({exc.status}). Retrying in {delay:.0f} s."
            self.sub_title = f"{self.source.url} · disconnected"
            self._set_problem(problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
