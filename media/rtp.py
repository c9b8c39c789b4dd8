"""RTP packets as bytes: the header fields forwarding needs, keyframe starts, a new header.

Pure functions on decrypted packets (RFC 3550 §5.1); no aiortc objects, because building an
``RtpPacket`` per packet is a large part of what RTP-level forwarding saves.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

_HEADER: Final = struct.Struct("!BBHII")
_HEADER_LEN: Final = 12
_VERSION_2: Final = 0x80
_PADDING: Final = 0x20
_EXTENSION: Final = 0x10
_MARKER: Final = 0x80

_H264_NAL_SPS: Final = 7
_H264_STAP_A: Final = 24
_H264_FU_A: Final = 28


class RtpHeader(NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload_start: int
    payload_end: int
    """Index just past the payload: padding (RFC 3550 §5.1, P bit) is left out."""


def is_rtcp(data: bytes) -> bool:
    """RTP and RTCP share the transport (RFC 5761 §4): RTCP packet types are 192-223."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_header(data: bytes) -> RtpHeader | None:
    """The header of an RTP packet, or None if it is not a well-formed RTP version 2 packet."""
    if len(data) < _HEADER_LEN:
        return None
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first & 0xC0 != _VERSION_2:
        return None
    start = _HEADER_LEN + 4 * (first & 0x0F)
    if first & _EXTENSION:
        if start + 4 > len(data):
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if first & _PADDING:
        end -= data[-1]
    if start > end:
        return None
    return RtpHeader(second & 0x7F, bool(second & _MARKER), sequence, timestamp, ssrc, start, end)


def build(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int) -> bytes:
    """A 12-byte header: no CSRCs and no extensions (the publisher's extension ids mean
    nothing on the subscriber's leg, which demultiplexes by the SSRC in our SDP)."""
    return _HEADER.pack(
        _VERSION_2,
        payload_type | (_MARKER if marker else 0),
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )


def starts_keyframe(mime_type: str, payload: bytes) -> bool:
    """Whether this packet's payload is the first packet of a keyframe (no decoding).

    Audio always counts as a start: Opus frames stand alone.
    """
    mime = mime_type.lower()
    if mime == "video/vp8":
        return _vp8_keyframe_start(payload)
    if mime == "video/h264":
        return _h264_keyframe_start(payload)
    return not mime.startswith("video/")


def _vp8_keyframe_start(payload: bytes) -> bool:
    # RFC 7741 §4.2: payload descriptor, then (S=1, PID=0) the VP8 payload header whose
    # bit 0 (P) is 0 for a key frame (RFC 6386 §9.1).
    if not payload:
        return False
    first = payload[0]
    if first & 0x17 != 0x10:  # S set, partition index 0
        return False
    at = 1
    if first & 0x80:  # X: extended control bits follow
        if len(payload) < 2:
            return False
        ext = payload[1]
        at = 2
        if ext & 0x80:  # I: PictureID, 7 or 15 bits
            if len(payload) <= at:
                return False
            at += 2 if payload[at] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            at += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            at += 1
    return len(payload) > at and payload[at] & 0x01 == 0


def _h264_keyframe_start(payload: bytes) -> bool:
    # RFC 6184 §5: a decodable sequence starts with an SPS, sent alone, first in a STAP-A,
    # or (rarely) fragmented.
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_NAL_SPS:
        return True
    if nal_type == _H264_STAP_A:
        return len(payload) > 3 and payload[3] & 0x1F == _H264_NAL_SPS
    if nal_type == _H264_FU_A:
        return len(payload) > 1 and payload[1] & 0x80 != 0 and payload[1] & 0x1F == _H264_NAL_SPS
    return False
