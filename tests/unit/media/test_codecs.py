"""Keyframe detection on real encoder output, and the codecs pinned on both legs."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
from av import VideoFrame

from media.codecs import is_keyframe, pinned_codecs


def encode(codec_name: str, count: int) -> list[tuple[bytes, bool]]:
    """(bitstream, encoder's own keyframe flag) per frame; H.264 as Annex B."""
    ctx = av.CodecContext.create(codec_name, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = 160, 120, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.gop_size = 4
    if codec_name == "libx264":
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast"}
    out = []
    for n in range(count):
        frame = VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes((n * 11 + i) & 0xFF for i in range(plane.buffer_size)))
        frame.pts = n
        out += [(bytes(p), p.is_keyframe) for p in ctx.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in ctx.encode(None)]
    return out


@pytest.mark.parametrize(("codec", "mime"), [("libvpx", "video/VP8"), ("libx264", "video/H264")])
def test_keyframes_match_the_encoder(codec: str, mime: str) -> None:
    packets = encode(codec, 9)
    assert len(packets) >= 8
    assert [is_keyframe(mime, data) for data, _ in packets] == [key for _, key in packets]
    assert sum(key for _, key in packets) >= 2


def test_garbage_is_not_a_keyframe() -> None:
    assert not is_keyframe("video/VP8", b"")
    assert not is_keyframe("video/VP8", b"\x00" * 3)
    assert not is_keyframe("video/H264", b"\x00\x00\x01")
    assert not is_keyframe("video/H264", b"\x00\x00\x00\x01\x41\x9a")  # non-IDR slice


def test_audio_frames_stand_alone() -> None:
    assert is_keyframe("audio/opus", b"\x01")


def test_pinned_codecs() -> None:
    audio = pinned_codecs("audio", "VP8")
    assert [c.mimeType for c in audio] == ["audio/opus"]
    vp8 = pinned_codecs("video", "VP8")
    assert [c.mimeType for c in vp8] == ["video/VP8", "video/rtx"]
    h264 = pinned_codecs("video", "H264")
    assert {c.mimeType for c in h264} == {"video/H264", "video/rtx"}
    assert h264[0].mimeType == "video/H264"
