"""Token-budget admission: a request reserves its worst-case tokens on one slot.

A slot is one model loaded on one node. The node reports the slot's token
budget (``active_token_budget_max``) and concurrency (``max_concurrency``);
the coordinator is the only source of work for the node, so the sum of its
own reservations is what is committed. A request reserves ``prompt +
max_tokens`` at dispatch and releases exactly that on every terminal path.
"""

from __future__ import annotations

from dataclasses import dataclass


class OverCommit(RuntimeError):
    """A reservation that does not fit was attempted: a routing bug, never a user error."""


@dataclass(slots=True)
class TokenBudget:
    """The reservations held against one slot.

    Attributes:
        max_tokens: The slot's KV token budget; ``0`` means not reported (only
            the concurrency cap applies).
        max_concurrency: Most requests in flight at once.
        reserved: Tokens reserved by requests in flight.
        running: Requests in flight.
    """

    max_tokens: int = 0
    max_concurrency: int = 1
    reserved: int = 0
    running: int = 0

    def fits(self, need: int) -> bool:
        """Whether a request needing ``need`` tokens can be admitted now."""
        if self.running >= self.max_concurrency:
            return False
        if self.max_tokens <= 0:
            return True
        # A single request bigger than the whole budget never fits; that is the
        # caller's "too large" case, not a reason to over-commit.
        return self.reserved + need <= self.max_tokens

    def has_room(self) -> bool:
        """Whether one more request of any size could start (concurrency only)."""
        return self.running < self.max_concurrency

    def reserve(self, need: int) -> None:
        """Take ``need`` tokens and one concurrency unit.

        Raises:
            OverCommit: the reservation does not fit.
        """
        if not self.fits(need):
            raise OverCommit(f"reserve {need} with {self.reserved}/{self.max_tokens} tokens, {self.running}/{self.max_concurrency} running")
        self.reserved += need
        self.running += 1

    def release(self, need: int) -> None:
        """Give back what ``reserve(need)`` took."""
        self.reserved = max(0, self.reserved - need)
        self.running = max(0, self.running - 1)

    def free_fraction(self) -> float:
        """Share of the concurrency cap still free (0..1)."""
        return max(0.0, 1.0 - self.running / max(1, self.max_concurrency))
