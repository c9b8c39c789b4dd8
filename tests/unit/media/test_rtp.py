"""media/rtp.py: RTP header parsing and building, RTCP demultiplexing, keyframe starts."""

from __future__ import annotations

import struct

import pytest

from media.rtp import RtpHeader, build, is_rtcp, parse_header, starts_keyframe


def packet(
    first: int = 0x80, second: int = 96, *, extra: bytes = b"", payload: bytes = b""
) -> bytes:
    """A fixed header (sequence 7, timestamp 1000, SSRC 0x11223344), then ``extra``, then
    ``payload``."""
    return struct.pack("!BBHII", first, second, 7, 1000, 0x11223344) + extra + payload


def test_build_parses_back() -> None:
    data = build(111, True, 0x1_0005, 0x1_0000_0009, 0xDEADBEEF) + b"opus"
    assert len(data) == 16
    assert parse_header(data) == RtpHeader(111, True, 5, 9, 0xDEADBEEF, 12, 16)
    header = parse_header(build(96, False, 65535, 0, 1))
    assert header is not None
    assert (header.marker, header.sequence, header.payload_start, header.payload_end) == (
        False,
        65535,
        12,
        12,
    )


def test_plain_header() -> None:
    assert parse_header(packet(second=0x80 | 100, payload=b"abc")) == RtpHeader(
        100, True, 7, 1000, 0x11223344, 12, 15
    )


def test_csrcs_are_skipped() -> None:
    header = parse_header(packet(0x82, extra=b"C1C1C2C2", payload=b"xy"))
    assert header is not None
    assert (header.payload_start, header.payload_end) == (20, 22)


def test_header_extension_is_skipped() -> None:
    # RFC 3550 §5.3.1: profile id, length in 32-bit words, then the words.
    ext = b"\xbe\xde\x00\x02" + b"E" * 8
    header = parse_header(packet(0x90, extra=ext, payload=b"xy"))
    assert header is not None
    assert header.payload_start == 24
    header = parse_header(packet(0x91, extra=b"CSRC" + ext, payload=b"xy"))
    assert header is not None
    assert header.payload_start == 28  # the extension comes after the CSRCs
    header = parse_header(packet(0x90, extra=b"\xbe\xde\x00\x00"))
    assert header is not None
    assert header.payload_start == header.payload_end == 16


def test_padding_is_left_out_of_the_payload() -> None:
    data = packet(0xA0, payload=b"abcd" + b"\x00\x00\x03")
    header = parse_header(data)
    assert header is not None
    assert data[header.payload_start : header.payload_end] == b"abcd"
    header = parse_header(packet(0xA0, payload=b"\x00\x00\x03"))  # padding only
    assert header is not None
    assert header.payload_start == header.payload_end == 12


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x60" + b"\x00" * 9,  # 11 bytes: shorter than the fixed header
        packet(0x40),  # version 1
        packet(0xC0),  # version 3
        packet(0x00, payload=b"abcd"),  # version 0
        packet(0x82, extra=b"CSRC"),  # 2 CSRCs announced, one present
        packet(0x8F),  # 15 CSRCs, none present
        packet(0x90, extra=b"\xbe\xde"),  # extension header cut short
        packet(0x90, extra=b"\xbe\xde\x00\x02" + b"E" * 7),  # extension longer than the packet
        packet(0xA0, payload=b"ab\x05"),  # more padding than payload
    ],
)
def test_malformed_packets_are_rejected(data: bytes) -> None:
    assert parse_header(data) is None


@pytest.mark.parametrize(
    ("data", "rtcp"),
    [
        (b"\x80\xc8" + b"\x00" * 26, True),  # SR (200)
        (b"\x81\xc9\x00\x07", True),  # RR (201)
        (b"\x80\xc0", True),  # 192, the lowest RTCP type (RFC 5761 §4)
        (b"\x80\xdf", True),  # 223, the highest
        (b"\x80\xbf", False),  # 191
        (b"\x80\xe0", False),  # 224
        (build(96, True, 1, 2, 3), False),  # marker + PT 96 = 0xE0
        (build(111, False, 1, 2, 3), False),
        (b"\x80", False),
        (b"", False),
    ],
)
def test_is_rtcp(data: bytes, rtcp: bool) -> None:
    assert is_rtcp(data) is rtcp


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (b"\x10\x00\x9d", True),  # S=1, PID=0, VP8 header P=0: key frame
        (b"\x10\x01\x9d", False),  # P=1: interframe
        (b"\x30\x00", True),  # N (non-reference) does not matter
        (b"\x00\x00", False),  # S=0: not the start of a partition
        (b"\x11\x00", False),  # partition index 1
        (b"\x14\x00", False),  # partition index 4
        (b"\x10", False),  # no VP8 payload header
        (b"", False),
        (b"\x80\x00\x00", False),  # X but S=0
        (b"\x90\x00\x00", True),  # X with no optional fields
        (b"\x90\x80\x05\x00", True),  # I, 7-bit PictureID
        (b"\x90\x80\x05\x01", False),
        (b"\x90\x80\x81\x01\x00", True),  # I, 15-bit PictureID (M bit): 2 bytes skipped
        (b"\x90\x80\x81\x00\x01", False),
        (b"\x90\x40\x07\x00", True),  # L: TL0PICIDX (odd, so not mistaken for the header)
        (b"\x90\x40\x06\x01", False),
        (b"\x90\x20\x41\x00", True),  # T: TID/Y/KEYIDX byte
        (b"\x90\x10\x01\x00", True),  # K alone: the same byte
        (b"\x90\x30\x01\x00", True),  # T and K share one byte
        (b"\x90\xf0\x81\x23\x01\x01\x00", True),  # I (15 bits), L, T, K
        (b"\x90\xf0\x81\x23\x01\x01\x01", False),
        (b"\x90\xf0\x05\x01\x01\x00", True),  # I (7 bits), L, T, K
        (b"\x90", False),  # X byte missing
        (b"\x90\x80", False),  # PictureID missing
        (b"\x90\x80\x05", False),  # VP8 header missing
        (b"\x90\x80\x85\x00", False),  # 15-bit PictureID, VP8 header missing
        (b"\x90\xf0\x81\x23\x01\x01", False),
    ],
)
def test_vp8_keyframe_start(payload: bytes, key: bool) -> None:
    assert starts_keyframe("video/VP8", payload) is key
    assert starts_keyframe("video/vp8", payload) is key


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (b"\x67\x42\xc0\x1f", True),  # single NAL unit: SPS
        (b"\x27\x42", True),  # SPS with nal_ref_idc 1
        (b"\x68\xce", False),  # PPS
        (b"\x65\x88", False),  # IDR slice without SPS first
        (b"\x41\x9a", False),  # non-IDR slice
        (b"\x78\x00\x0a\x67\x42\x00\x04\x68\xce", True),  # STAP-A: SPS first
        (b"\x78\x00\x04\x68\xce\x00\x0a\x67\x42", False),  # STAP-A: PPS first
        (b"\x78\x00\x0a", False),  # STAP-A cut short
        (b"\x7c\x87\x42", True),  # FU-A: start (S) of an SPS
        (b"\x7c\x07\x42", False),  # FU-A: SPS, not the start
        (b"\x7c\x47\x42", False),  # FU-A: SPS end (E), not the start
        (b"\x7c\x85\x88", False),  # FU-A: start of an IDR slice
        (b"\x7c", False),  # FU-A header missing
        (b"", False),
    ],
)
def test_h264_keyframe_start(payload: bytes, key: bool) -> None:
    assert starts_keyframe("video/H264", payload) is key


def test_audio_always_starts_and_other_video_never() -> None:
    assert starts_keyframe("audio/opus", b"")
    assert starts_keyframe("audio/PCMU", b"\x01")
    assert not starts_keyframe("video/VP9", b"\x10\x00")
    assert not starts_keyframe("video/AV1", b"")
