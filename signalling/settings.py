"""Root settings: composes each package's section (DESIGN §1).

Settings come from a mapping (normally the process environment, passed in by the CLI):
``JALWA_`` prefix, ``__`` between nested names, unknown keys rejected.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from billing.settings import BillingSettings
from media.settings import MediaSettings
from turn.settings import TurnSettings

ENV_PREFIX = "JALWA_"
NESTED_DELIMITER = "__"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthSettings(Section):
    """JWT verification. Algorithms are pinned: one algorithm per deployment."""

    algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        "HS256", description="JWT signature algorithm accepted (exactly one)"
    )
    secret: SecretStr | None = Field(None, description="HS256 shared secret (>= 32 bytes)")
    public_key: str | None = Field(None, description="PEM public key for RS256/ES256")
    private_key_file: Path | None = Field(
        None, description="PEM private key used only by `jalwa token` for RS256/ES256"
    )
    audience: str | None = Field(None, description="required `aud` claim, when set")
    issuer: str | None = Field(None, description="required `iss` claim, when set")
    leeway_s: int = Field(5, ge=0, le=300, description="clock skew allowed on exp/nbf")
    dev_key_file: Path = Field(
        Path(".jalwa/dev-jwt-secret"),
        description="development only: HS256 key file created on first use",
    )

    @model_validator(mode="after")
    def _key_matches_algorithm(self) -> AuthSettings:
        if self.algorithm == "HS256" and self.public_key is not None:
            raise ValueError("auth.public_key is for RS256/ES256; HS256 uses auth.secret")
        if self.algorithm != "HS256" and self.secret is not None:
            raise ValueError(f"auth.secret is for HS256; {self.algorithm} uses auth.public_key")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < 32:
            raise ValueError("auth.secret must be at least 32 bytes")
        return self


class IceServer(Section):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class HubSettings(Section):
    """WebSocket hub limits and call timers."""

    heartbeat_s: float = Field(
        10.0,
        gt=0,
        description="WebSocket ping interval; no pong within half of it drops the client",
    )
    max_frame_bytes: int = Field(
        65536, ge=1024, description="larger frames get error frame_too_large"
    )
    hard_frame_bytes: int = Field(
        262144, ge=1024, description="larger frames close the connection with 1009"
    )
    rate_per_s: float = Field(50.0, gt=0, description="sustained client messages per second")
    rate_burst: int = Field(100, ge=1, description="client messages allowed in a burst")
    flood_close_after: int = Field(
        50, ge=1, description="messages refused for rate in a row before close 4008"
    )
    send_queue_max: int = Field(
        512, ge=8, description="queued outgoing frames before a slow consumer is dropped (4008)"
    )
    send_queue_max_bytes: int = Field(
        1_048_576,
        ge=65536,
        description="queued outgoing bytes before a slow consumer is dropped (4008)",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a client that takes no frame for this long while frames wait is dropped",
    )
    max_connections_per_ip: int = Field(
        200, ge=1, description="open WebSockets one client address may hold (then 4008)"
    )
    connects_per_ip_per_s: float = Field(
        20.0, gt=0, description="new WebSockets per second from one client address"
    )
    connect_burst_per_ip: int = Field(
        100, ge=1, description="new WebSockets from one client address allowed in a burst"
    )
    connects_per_user_per_min: float = Field(
        30.0, gt=0, description="new sessions per minute for one user"
    )
    connect_burst_per_user: int = Field(
        10, ge=1, description="new sessions for one user allowed in a burst"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="reverse proxies (IPs or CIDRs) whose X-Forwarded-For names the client",
    )
    resume_window_s: float = Field(
        120.0, ge=0, description="a dropped session can be resumed this long; 0 never"
    )
    resume_buffer_frames: int = Field(
        512, ge=1, description="frames kept for a session's resume (past them: resync)"
    )
    resume_buffer_bytes: int = Field(
        262_144,
        ge=1024,
        description="bytes of recent frames a connected session keeps for its resume",
    )
    ring_timeout_s: float = Field(30.0, gt=0, description="an unanswered call ends (timeout)")
    drain_deadline_s: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM, running calls are kept this long less a settling margin, "
        "then ended (shutdown); the process exits within it",
    )
    peer_lost_grace_s: float = Field(
        15.0, ge=0, description="a party gone this long ends its call (peer_lost)"
    )
    presence_watch_max: int = Field(500, ge=1, description="users one session may watch")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="ICE servers sent in welcome (JSON list)"
    )
    demo_page: bool = Field(True, description="serve the demo app at / (development only)")
    demo_gifts: bool = Field(
        True, description="write a starter gift catalog when it is empty (development only)"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            ipaddress.ip_network(proxy, strict=False)  # ValueError names the bad entry
        return proxies


class PresenceSettings(Section):
    """Presence keys: per-user status keys and a per-node liveness key, both with TTLs."""

    ttl_s: int = Field(15, ge=2, description="a user's presence expires this long after a crash")
    node_ttl_s: int = Field(
        5, ge=1, description="a node (and the calls it runs) is dead this long after its last beat"
    )
    key_prefix: str = Field("jalwa", description="prefix of every Redis key")


class MatchSettings(Section):
    """Matchmaking (docs/protocol.md §10): queue time, widening radius, pairing rules."""

    timeout_s: float = Field(60.0, gt=0, description="a caller not matched by then: match.timeout")
    avoid_recent_s: float = Field(
        1800.0, ge=0, description="two users paired are not paired again within this"
    )
    nearby_start_km: float = Field(5.0, gt=0, description="first radius of a nearby search")
    nearby_max_km: float = Field(100.0, gt=0, description="widest radius of a nearby search")
    widen_every_s: float = Field(
        2.0, gt=0, description="a nearby caller's radius doubles this often while they wait"
    )
    rescan_s: float = Field(
        5.0, gt=0, description="a waiting caller with filters looks further into the pool"
    )
    scan_max: int = Field(200, ge=1, le=5000, description="pool entries one pairing looks at")
    reserve_s: float = Field(
        10.0, gt=0, description="a pairing not turned into a call by then frees both users"
    )
    exclude_max: int = Field(500, ge=0, description="blocked users kept apart per request")


class ChatSettings(Section):
    """Chat limits and the MongoDB database it lives in."""

    max_text_chars: int = Field(4000, ge=1, le=20_000, description="longest message text")
    rate_per_s: float = Field(5.0, gt=0, description="sustained chat.send per second")
    rate_burst: int = Field(20, ge=1, description="chat.send allowed in a burst")
    backlog_limit: int = Field(
        200, ge=1, le=200, description="kept messages pushed to a user when they connect"
    )
    database: str = Field("jalwa", description="MongoDB database name")


class Settings(BaseSettings):
    """Everything jalwa reads at start; see `jalwa genconfig`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="forbid", frozen=True
    )

    env: Literal["development", "production"] = Field(
        "development", description="production refuses dev keys and embedded stores"
    )
    host: str = Field("127.0.0.1", description="address `jalwa serve` listens on")
    port: int = Field(8080, ge=0, le=65535, description="port `jalwa serve` listens on")
    node_id: str = Field(
        default_factory=lambda: "n-" + secrets.token_hex(4),
        description="this process's id in Redis (random per start when unset)",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    redis_url: str | None = Field(None, description="Redis for presence; embedded when unset")
    redis_max_connections: int = Field(
        64, ge=2, description="Redis connections per node; more operations wait for one"
    )
    database_url: str | None = Field(
        None, description="PostgreSQL for the ledger (postgresql://...); embedded when unset"
    )
    mongo_url: str | None = Field(
        None, description="MongoDB for chat (mongodb://...); embedded when unset"
    )
    migrate_on_start: bool = Field(
        False, description="apply pending SQL migrations when `jalwa serve` starts"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_json: bool = Field(False, description="JSON log lines instead of console format")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="grace for open sockets on exit")

    auth: AuthSettings = Field(default_factory=AuthSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    match: MatchSettings = Field(default_factory=MatchSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)

    @model_validator(mode="before")
    @classmethod
    def _turn_follows_env(cls, data: Any) -> Any:
        # turn.production mirrors env (coturn's deny list depends on it); never set by hand.
        if isinstance(data, dict):
            turn = data.get("turn") or {}
            if isinstance(turn, TurnSettings):
                turn = turn.model_dump()
            data = {**data, "turn": {**turn, "production": data.get("env") == "production"}}
        return data

    @model_validator(mode="after")
    def _orphans_after_dead_nodes(self) -> Settings:
        # The ledger ends a call whose node stopped touching it; by then that node must
        # already count as dead everywhere, so the survivor that finds it tells the
        # parties instead of sending the end to a node that is gone.
        orphan_after = self.billing.orphan_after_s
        if 0 < orphan_after <= self.presence.node_ttl_s:
            raise ValueError(
                f"billing.orphan_after_s ({orphan_after}) must be longer than "
                f"presence.node_ttl_s ({self.presence.node_ttl_s})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: the environment reaches us through from_env(), so tests
        # pass plain dicts and nothing reads the process environment behind our back.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        return cls(**nest_env(environ))

    def production_problems(self) -> list[str]:
        """What production mode needs and this configuration lacks."""
        problems = []
        if self.auth.secret is None and self.auth.public_key is None:
            problems.append(
                "no JWT key: set JALWA_AUTH__SECRET (HS256) or JALWA_AUTH__PUBLIC_KEY (RS256/ES256)"
            )
        if self.redis_url is None:
            problems.append("no Redis for presence: set JALWA_REDIS_URL")
        if self.database_url is None:
            problems.append("no PostgreSQL for the ledger: set JALWA_DATABASE_URL")
        if self.mongo_url is None:
            problems.append("no MongoDB for chat: set JALWA_MONGO_URL")
        return problems


def nest_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``JALWA_HUB__RATE_PER_S=5`` -> ``{"hub": {"rate_per_s": "5"}}``; JSON values for lists."""
    nested: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{key}: not valid JSON: {exc}") from exc
        node = nested
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{key}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return nested
