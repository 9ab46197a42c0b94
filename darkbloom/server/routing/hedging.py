"""Speculative dispatch (hedging): when to send a request to a second node, and when not to.

The first node gets until half the first-content deadline; if nothing has
arrived, a second node gets the request too, and the first content wins. The
governor keeps hedging from feeding on itself: no hedge while the model has a
queue or fewer than two nodes have room, and once 8 hedges have been tried,
none while they win under 10 % of the time (but 1 in 16 goes through, so the
rate can recover).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    enabled: bool = True
    deadline_factor: float = 4.0
    min_deadline_s: float = 1.0
    max_deadline_s: float = 60.0
    min_tries: int = 8
    min_win_rate: float = 0.1
    let_through_every: int = 16


def hedge_delay_s(expected_ttft_s: float, config: HedgeConfig) -> float:
    """Seconds after dispatch to launch the hedge: half the first-content deadline."""
    deadline = min(config.max_deadline_s, max(config.min_deadline_s, config.deadline_factor * expected_ttft_s))
    return deadline / 2


@dataclass(slots=True)
class HedgeGovernor:
    """Counts hedges and their wins; decides whether the next one may go."""

    config: HedgeConfig = HedgeConfig()
    tries: int = 0
    wins: int = 0
    suppressed: int = 0

    def allow(self, queue_depth: int, nodes_with_room: int) -> bool:
        cfg = self.config
        if not cfg.enabled or queue_depth > 0 or nodes_with_room < 2:
            return False
        if self.tries >= cfg.min_tries and self.wins / self.tries < cfg.min_win_rate:
            self.suppressed += 1
            return self.suppressed % cfg.let_through_every == 0
        return True

    def record(self, hedge_won: bool) -> None:
        self.tries += 1
        self.wins += int(hedge_won)
