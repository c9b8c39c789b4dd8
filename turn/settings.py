"""TURN's own settings section (``JALWA_TURN__*``): REST credentials and the coturn it renders."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# The secret is written verbatim into turnserver.conf: no whitespace, quotes or '#'.
_SECRET_CHARS = re.compile(r"^[!$-&(-~]+$")
_URL = re.compile(r"^(turns?|stuns?):[^\s]+$")
MIN_SECRET_BYTES = 32


class TurnSettings(BaseModel):
    """TURN relay (coturn) with short-lived REST credentials minted per user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretStr | None = Field(
        None,
        description="coturn static-auth-secret shared with jalwa (>= 32 bytes); no TURN when unset",
    )
    realm: str = Field(
        "jalwa", pattern=r"^[A-Za-z0-9.-]{1,64}$", description="TURN realm (coturn `realm`)"
    )
    urls: list[str] = Field(
        default_factory=lambda: [
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp",
        ],
        description="TURN/STUN URLs handed to clients in welcome.ice_servers (JSON list)",
    )
    ttl_s: int = Field(3600, ge=60, le=86400, description="lifetime of a minted TURN credential")
    listening_ip: str = Field("127.0.0.1", description="address coturn listens and relays on")
    listening_port: int = Field(3478, ge=1, le=65535, description="coturn UDP+TCP listening port")
    min_port: int = Field(49160, ge=1024, le=65535, description="lowest relay port coturn uses")
    max_port: int = Field(49200, ge=1024, le=65535, description="highest relay port coturn uses")
    allow_loopback_peers: bool = Field(
        False, description="tests only: let coturn relay to 127.0.0.1 (never in production)"
    )
    log_file: Path | None = Field(None, description="coturn log file; logs go to stdout when unset")
    production: bool = Field(
        False, description="set from JALWA_ENV=production by the app; do not set by hand"
    )

    @field_validator("secret")
    @classmethod
    def _secret_is_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if len(raw.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"turn.secret must be at least {MIN_SECRET_BYTES} bytes")
        if not _SECRET_CHARS.match(raw):
            raise ValueError("turn.secret: printable ASCII without spaces, quotes or '#'")
        return value

    @field_validator("urls")
    @classmethod
    def _urls_are_ice(cls, value: list[str]) -> list[str]:
        for url in value:
            if not _URL.match(url):
                raise ValueError(f"turn.urls: {url!r} is not a turn:, turns:, stun: or stuns: URL")
        return value

    @field_validator("listening_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))

    @field_validator("log_file")
    @classmethod
    def _one_line(cls, value: Path | None) -> Path | None:
        if value is not None and not str(value).isprintable():
            raise ValueError("turn.log_file: a path without control characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TurnSettings:
        if self.min_port > self.max_port:
            raise ValueError("turn.min_port must not exceed turn.max_port")
        if self.production and self.allow_loopback_peers:
            raise ValueError("turn.allow_loopback_peers is for tests; refused in production")
        return self

    def production_problems(self) -> list[str]:
        """What a production TURN set-up needs and this configuration lacks."""
        problems = []
        if self.secret is None:
            problems.append("no TURN secret: set JALWA_TURN__SECRET (coturn static-auth-secret)")
        if not self.urls:
            problems.append("no TURN URLs: set JALWA_TURN__URLS (JSON list)")
        return problems
