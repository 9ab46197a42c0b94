"""Coordinator settings: parsed once by the CLI, passed to ``create_app``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from darkbloom.server.routing.state import RoutingConfig


def darkbloom_home(explicit: str | Path | None = None) -> Path:
    """The darkbloom home: ``--home``, else ``$DARKBLOOM_HOME``, else ``~/.darkbloom``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("DARKBLOOM_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".darkbloom"


def default_db_url(home: Path) -> str:
    """``$DARKBLOOM_DATABASE_URL``, else an SQLite file under the home."""
    return os.environ.get("DARKBLOOM_DATABASE_URL") or f"sqlite:///{home / 'coordinator.db'}"


class SettingsError(ValueError):
    """A setting from the environment that cannot be used (the CLI prints it as one line)."""


def _env_number(name: str, default: float) -> float:
    """A number from the environment (operators tune billing without code), else ``default``.

    Raises:
        SettingsError: set, but not a number.
    """
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"${name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator reads at start."""

    home: Path = field(default_factory=darkbloom_home)
    db_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8420
    heartbeat_interval_s: float = 5.0
    node_timeout_s: float = 90.0
    request_timeout_s: float = 600.0
    first_token_timeout_s: float = 120.0
    # On SIGTERM / Ctrl-C: stop accepting, let relayed requests finish for up to this long, then
    # close the nodes' sockets (8 s fits inside the 10 s most supervisors wait before SIGKILL).
    shutdown_drain_s: float = field(default_factory=lambda: _env_number("DARKBLOOM_SHUTDOWN_DRAIN_S", 8.0))
    max_body_bytes: int = 16 * 1024 * 1024
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    # Money (issue #4): the provider's share of each charge (the rest is the platform fee), a
    # referrer's share of that fee, the least a priced request costs, per-consumer rate limits.
    # $DARKBLOOM_PROVIDER_SHARE and $DARKBLOOM_REFERRAL_SHARE are fractions (0.9 = 90%).
    provider_share_bps: int = field(default_factory=lambda: round(_env_number("DARKBLOOM_PROVIDER_SHARE", 0.9) * 10_000))
    referral_share_bps: int = field(default_factory=lambda: round(_env_number("DARKBLOOM_REFERRAL_SHARE", 0.2) * 10_000))
    min_charge_micro_usd: int = field(default_factory=lambda: int(_env_number("DARKBLOOM_MIN_CHARGE_MICRO_USD", 100)))
    rate_limit_rps: float = field(default_factory=lambda: _env_number("DARKBLOOM_RATE_LIMIT_RPS", 20.0))
    rate_limit_burst: int = field(default_factory=lambda: int(_env_number("DARKBLOOM_RATE_LIMIT_BURST", 120)))
    input_tokens_per_min: int = field(default_factory=lambda: int(_env_number("DARKBLOOM_INPUT_TOKENS_PER_MIN", 5_000_000)))
    output_tokens_per_min: int = field(default_factory=lambda: int(_env_number("DARKBLOOM_OUTPUT_TOKENS_PER_MIN", 500_000)))
    stale_hold_sweep_s: float = 60.0
    money_rate_limit_rps: float = 0.2  # deposits, connect and payouts, per account
    money_rate_limit_burst: int = 3
    # Stripe: unset means deposits and payouts answer 503. ``stripe_api_base`` points the SDK elsewhere (tests).
    stripe_api_key: str = field(default_factory=lambda: os.environ.get("DARKBLOOM_STRIPE_API_KEY", ""))
    stripe_webhook_secret: str = field(default_factory=lambda: os.environ.get("DARKBLOOM_STRIPE_WEBHOOK_SECRET", ""))
    stripe_api_base: str = field(default_factory=lambda: os.environ.get("DARKBLOOM_STRIPE_API_BASE", ""))
    public_url: str = ""
    min_deposit_micro_usd: int = 500_000
    min_payout_micro_usd: int = 1_000_000
    # Attestation (the seed's cadence): challenge every 5 min, answer within 30 s,
    # routable only with a pass in the last 16 min, 3 failures -> untrusted.
    challenge_interval_s: float = 300.0
    challenge_timeout_s: float = 30.0
    challenge_window_s: float = 960.0
    untrusted_after_failures: int = 3
    attestation_max_age_s: float = 300.0
    require_attestation: bool = False

    def resolved_db_url(self) -> str:
        return self.db_url or default_db_url(self.home)
