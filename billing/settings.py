"""Billing's own settings section (``JALWA_BILLING__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class BillingSettings(BaseModel):
    """Per-minute billing, gifts, recharges and withdrawals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minute_seconds: int = Field(60, ge=1, le=3600, description="length of a billed minute")
    default_rate: int = Field(10, ge=0, description="coins per minute for hosts without a rate")
    host_share_bps: int = Field(
        5000, ge=0, le=10000, description="host's share of call and gift coins, basis points"
    )
    low_balance_minutes: int = Field(
        2, ge=0, description="warn the caller when fewer minutes than this remain"
    )
    loop_interval_s: float = Field(0.5, gt=0, description="how often the billing loop looks")
    batch_size: int = Field(5000, ge=1, description="due call-minutes billed per statement batch")
    recharge_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 secret of the payment provider's signed receipts"
    )
    orphan_after_s: int = Field(
        15,
        ge=0,
        description="end a call (peer_lost, unbilled) its node stopped touching this long; 0 never",
    )
    keepalive_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="how often a node touches its calls; a minute is charged after a touch",
    )
    unreachable_grace_s: float = Field(
        20.0,
        ge=0,
        description="calls end (billing_unavailable) when the ledger is unreachable this long",
    )
    max_amount: int = Field(
        10_000_000, ge=1, description="largest amount one recharge / credit / withdrawal may move"
    )
