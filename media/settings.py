"""Media's own settings section (``JALWA_MEDIA__*``, DESIGN §1 and §6)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MediaMode = Literal["sfu", "p2p"]
Forwarding = Literal["rtp", "frame"]
VideoCodec = Literal["VP8", "H264"]
RecordingPolicy = Literal["off", "opt_in", "always"]


class MediaSettings(BaseModel):
    """The SFU: which addresses it gathers on, the pinned codec, queue bounds, recording."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: MediaMode = Field(
        "sfu", description="sfu: media goes through the server; p2p: hub relays SDP/ICE only"
    )
    host_addresses: tuple[str, ...] = Field(
        (), description="local IPs to gather host candidates on; empty = every non-loopback IP"
    )
    include_loopback: bool = Field(
        False, description="also gather on 127.0.0.1 (aioice leaves it out); tests set this"
    )
    public_address: str | None = Field(
        None, description="IP advertised as a server-reflexive candidate (server behind NAT)"
    )
    port_min: int | None = Field(
        None, ge=1, le=65535, description="lowest local UDP port for host candidates"
    )
    port_max: int | None = Field(
        None, ge=1, le=65535, description="highest local UDP port for host candidates"
    )
    forwarding: Forwarding = Field(
        "rtp",
        description="rtp: forward each packet as it arrives (header rewritten); frame: "
        "forward aiortc's reassembled encoded frames (slower; kept for comparison)",
    )
    video_codec: VideoCodec = Field(
        "VP8", description="video codec pinned on both legs of every call"
    )
    keyframe_interval_s: float = Field(
        1.0, gt=0, le=60, description="at most one keyframe request (PLI) per publisher this often"
    )
    connect_timeout_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="a party's media must connect within this long of the call's start, its "
        "offer or its failing, else the call's media failed: the hub ends the call media_failed",
    )
    queue_frames: int = Field(
        60, ge=2, le=10_000, description="bound of every forwarding queue, in encoded frames"
    )
    record_dir: Path | None = Field(
        None, description="directory recordings are written to (required unless recording off)"
    )
    recording: RecordingPolicy = Field(
        "off", description="off; opt_in: calls that ask to be recorded; always: every call"
    )
    record_queue_frames: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="bound of a call recorder's queue to its muxing thread, in encoded frames",
    )
    record_start_wait_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="how long a party's recording waits for its first video keyframe "
        "(frame size, codec parameters) before writing the file header without it",
    )

    @field_validator("host_addresses")
    @classmethod
    def _ip_literals(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(_parse_ip(v)) for v in value)

    @field_validator("public_address")
    @classmethod
    def _public_ip_literal(cls, value: str | None) -> str | None:
        return None if value is None else str(_parse_ip(value))

    @model_validator(mode="after")
    def _consistent(self) -> MediaSettings:
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("media.port_min and media.port_max are set together")
        if self.port_range is not None and self.port_range[0] > self.port_range[1]:
            raise ValueError("media.port_min must not exceed media.port_max")
        if self.recording != "off" and self.record_dir is None:
            raise ValueError("media.record_dir is required when media.recording is not off")
        return self

    @property
    def port_range(self) -> tuple[int, int] | None:
        """The inclusive (min, max) local UDP port range, or None for ephemeral ports."""
        if self.port_min is None or self.port_max is None:
            return None
        return (self.port_min, self.port_max)


def _parse_ip(value: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(value.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None
