"""MediaSettings: defaults, validation, frozen and strict."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from media.settings import MediaSettings


def test_defaults() -> None:
    s = MediaSettings()
    assert (s.mode, s.video_codec, s.include_loopback, s.recording) == ("sfu", "VP8", False, "off")
    assert s.host_addresses == () and s.port_range is None and s.public_address is None
    assert s.keyframe_interval_s == 1.0 and s.queue_frames == 60


def test_every_field_is_described() -> None:
    assert all(f.description for f in MediaSettings.model_fields.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "mesh"},
        {"video_codec": "AV1"},
        {"host_addresses": ["not-an-ip"]},
        {"public_address": "example.com"},
        {"port_min": 50000},
        {"port_min": 50100, "port_max": 50000},
        {"queue_frames": 0},
        {"keyframe_interval_s": 0},
        {"recording": "always"},
        {"unknown": 1},
    ],
)
def test_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MediaSettings.model_validate(bad)


def test_normalises_and_freezes(tmp_path: Path) -> None:
    s = MediaSettings.model_validate(
        {
            "host_addresses": [" 127.0.0.1", "::1"],
            "port_min": 50000,
            "port_max": 50010,
            "recording": "opt_in",
            "record_dir": str(tmp_path),
        }
    )
    assert s.host_addresses == ("127.0.0.1", "::1")
    assert s.port_range == (50000, 50010)
    with pytest.raises(ValidationError):
        s.mode = "p2p"  # type: ignore[misc]
