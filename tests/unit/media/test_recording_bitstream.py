"""media/recording/bitstream.py: codec parameters read from real encoders' output.

Encoded frames are made with PyAV's encoders (libopus, libvpx, libx264), so the parsers
see what a real publisher sends.
"""

from __future__ import annotations

import pytest

from media.recording.bitstream import (
    h264_nal_units,
    h264_parameter_sets,
    h264_size,
    opus_head,
    opus_samples,
    vp8_size,
)
from tests.mediautil import encode_video


def test_opus_head_is_rfc7845() -> None:
    head = opus_head()
    assert len(head) == 19 and head[:8] == b"OpusHead"
    assert head[8] == 1 and head[9] == 2  # version, channels
    assert int.from_bytes(head[12:16], "little") == 48_000
    assert head[18] == 0  # mapping family 0


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xFC, 0]), 960),  # CELT FB 20 ms, one frame
        (bytes([0x78]), 960),  # hybrid FB 20 ms
        (bytes([0x08]), 960),  # SILK NB 20 ms
        (bytes([0x18]), 2880),  # SILK NB 60 ms
        (bytes([0xF9]), 1920),  # CELT 20 ms, two frames (code 1)
        (bytes([0xF3, 0x04]), 4 * 480),  # CELT FB 10 ms, code 3 with 4 frames
        (bytes([0xE0]), 120),  # CELT NB 2.5 ms
        (b"", 0),
    ],
)
def test_opus_samples_from_the_toc(packet: bytes, samples: int) -> None:
    assert opus_samples(packet) == samples


def test_vp8_size_from_a_keyframe_only() -> None:
    packets = encode_video("libvpx", 320, 180, 3)
    assert packets[0].is_keyframe
    assert vp8_size(bytes(packets[0])) == (320, 180)
    assert not packets[1].is_keyframe and vp8_size(bytes(packets[1])) is None
    assert vp8_size(b"\x00" * 4) is None


@pytest.mark.parametrize(
    ("width", "height", "profile"),
    [(320, 180, "baseline"), (640, 480, "high"), (1280, 720, "main"), (176, 144, "baseline")],
)
def test_h264_size_and_parameter_sets_from_a_keyframe(
    width: int, height: int, profile: str
) -> None:
    packets = encode_video(
        "libx264", width, height, 1, profile=profile, tune="zerolatency", preset="ultrafast"
    )
    keyframe = bytes(packets[0])
    units = h264_nal_units(keyframe)
    types = [u[0] & 0x1F for u in units]
    assert 7 in types and 8 in types and 5 in types
    sps = next(u for u in units if u[0] & 0x1F == 7)
    assert h264_size(sps) == (width, height)
    sets = h264_parameter_sets(keyframe)
    assert (
        sets is not None
        and sets.startswith(b"\x00\x00\x00\x01")
        and sets.count(b"\x00\x00\x00\x01") == 2
    )
    assert h264_size(sps[:4]) is None  # truncated: not a crash
    assert h264_parameter_sets(b"\x00\x00\x00\x01\x65abc") is None  # IDR without SPS/PPS
