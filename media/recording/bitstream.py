"""Codec parameters read from encoded frames, never decoded (the recorder's muxer needs them).

Matroska wants each stream's parameters up front: Opus an ``OpusHead`` as CodecPrivate, VP8
the frame size (from its first keyframe), H264 its SPS/PPS (as avcC) and size. These are
read straight from the bitstream the publisher sent; no codec is opened.
"""

from __future__ import annotations

import re
from typing import Final

OPUS_RATE: Final = 48_000


def opus_head(channels: int = 2) -> bytes:
    """The Opus identification header (RFC 7845 §5.1) Matroska wants as CodecPrivate.

    WebRTC negotiates ``opus/48000/2``; pre-skip 0 because the sender's encoder delay is not
    known here (at most a few ms of priming samples are played).
    """
    return (
        b"OpusHead"
        + bytes([1, channels])
        + (0).to_bytes(2, "little")
        + OPUS_RATE.to_bytes(4, "little")
        + (0).to_bytes(2, "little")
        + b"\x00"
    )


def opus_samples(packet: bytes) -> int:
    """How many 48 kHz samples an Opus packet holds, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """A VP8 keyframe's (width, height) (RFC 6386 §9.1); None for other frames."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def h264_nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (without their start codes)."""
    units: list[bytes] = []
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[start:end].rstrip(b"\x00") if i + 1 < len(starts) else data[start:end]
        if unit:
            units.append(unit)
    return units


def h264_parameter_sets(data: bytes) -> bytes | None:
    """The SPS and PPS of an H264 keyframe, as Annex B (the muxer writes them as avcC)."""
    units = h264_nal_units(data)
    sps = [u for u in units if u[0] & 0x1F == 7]
    pps = [u for u in units if u[0] & 0x1F == 8]
    if not sps or not pps:
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in (sps[0], *pps))


class _Bits:
    """An H264 RBSP bit reader with Exp-Golomb codes (ITU-T H.264 §7.2, §9.1)."""

    def __init__(self, nal: bytes) -> None:
        self._data = re.sub(b"\x00\x00\x03", b"\x00\x00", nal[1:])  # emulation prevention
        self._pos = 0

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]  # IndexError past the end: a truncated SPS
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def h264_size(sps: bytes) -> tuple[int, int] | None:
    """(width, height) from an H264 SPS NAL unit (cropping applied); None if unreadable."""
    try:
        return _h264_size(_Bits(sps))
    except (IndexError, ValueError):
        return None


def _h264_size(r: _Bits) -> tuple[int, int] | None:
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma_format = 1
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma_format = r.ue()
        if chroma_format == 3:
            separate_planes = r.bits(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bits(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if r.bits(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bits(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bits(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bits(1)
    if not frame_mbs_only:
        r.bits(1)  # mb_adaptive_frame_field_flag
    r.bits(1)  # direct_8x8_inference_flag
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.bits(1) else (0, 0, 0, 0)
    if chroma_format == 0 or separate_planes:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 2 if chroma_format in (1, 2) else 1
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = scale = 8
    for _ in range(size):
        if scale != 0:
            scale = (last + r.se() + 256) % 256
        last = scale if scale != 0 else last
