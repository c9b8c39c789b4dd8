"""Codec pinning and keyframe detection on encoded frames (no decoding)."""

from __future__ import annotations

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from media.settings import VideoCodec

AUDIO_MIME = "audio/opus"
"""The one audio codec: every WebRTC endpoint has it and its frames stand alone."""

_H264_NAL_IDR = 5
_H264_NAL_SPS = 7


def pinned_codecs(kind: str, video_codec: VideoCodec) -> list[RTCRtpCodecCapability]:
    """The codec preferences set on every transceiver of ``kind``, on both legs.

    Forwarded frames are never transcoded, so publisher and subscriber legs must agree on
    the codec: audio is Opus only, video the configured codec plus RTX (retransmissions).
    """
    wanted = {AUDIO_MIME} if kind == "audio" else {f"video/{video_codec}".lower(), "video/rtx"}
    send = RTCRtpSender.getCapabilities(kind).codecs
    recv_caps = RTCRtpReceiver.getCapabilities(kind)
    recv = recv_caps.codecs if recv_caps is not None else []
    pinned = [c for c in send if c.mimeType.lower() in wanted and c in recv]
    pinned.sort(key=lambda c: c.mimeType.lower() == "video/rtx")  # the codec(s), then RTX
    if not any(c.mimeType.lower() != "video/rtx" for c in pinned):
        raise ValueError(f"aiortc cannot send and receive {kind} codec {wanted}")
    return pinned


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame can be decoded with no earlier frame."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return _vp8_keyframe(data)
    if mime == "video/h264":
        return _h264_keyframe(data)
    # Audio codecs we pin (Opus) have no inter-frame dependency worth gating on.
    return not mime.startswith("video/")


def _vp8_keyframe(data: bytes) -> bool:
    # RFC 6386 §9.1: 3-byte frame tag whose bit 0 is 0 for a key frame, which then carries
    # the start code 9d 01 2a.
    return len(data) >= 10 and data[0] & 0x01 == 0 and data[3:6] == b"\x9d\x01\x2a"


def _h264_keyframe(data: bytes) -> bool:
    # aiortc's depayloader emits Annex B (RFC 6184 NAL units behind 00 00 00 01 start
    # codes); an IDR slice or an SPS starts a decodable sequence.
    start = 0
    while True:
        start = data.find(b"\x00\x00\x01", start)
        if start == -1 or start + 3 >= len(data):
            return False
        nal_type = data[start + 3] & 0x1F
        if nal_type in (_H264_NAL_IDR, _H264_NAL_SPS):
            return True
        start += 3
