"""The aiortc internals media/rtp_hooks.py relies on, exercised for real (no sockets).

If an aiortc upgrade breaks any of these tests, the SFU would silently fall back to decoding
(or stop forwarding): read the module docstring of media/rtp_hooks.py before upgrading.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from fractions import Fraction

import aiortc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket
from av import VideoFrame

from media.errors import AiortcInternalsChanged
from media.rtp_hooks import (
    AIORTC_VERIFIED,
    EncodedFrame,
    check_aiortc_internals,
    hook_keyframe_requests,
    install_encoded_tap,
    media_ssrc,
)

VP8_PT = 97
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=VP8_PT)
SSRC = 0x1234


def test_installed_aiortc_is_the_verified_one() -> None:
    # Bump AIORTC_VERIFIED only after re-reading aiortc's receiver/sender internals.
    assert aiortc.__version__ == AIORTC_VERIFIED
    check_aiortc_internals()


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    yield pc
    await pc.close()


def vp8_frames(count: int) -> list[tuple[list[bytes], int]]:
    encoder = Vp8Encoder()
    out = []
    for n in range(count):
        frame = VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes((n * 13 + i) & 0xFF for i in range(plane.buffer_size)))
        frame.pts = n * 3000
        frame.time_base = Fraction(1, 90000)
        out.append(encoder.encode(frame, force_keyframe=False))
    return out


async def feed(receiver: RTCRtpReceiver, frames: list[tuple[list[bytes], int]]) -> list[bytes]:
    """Send encoded frames as RTP into the receiver; returns each frame's VP8 bitstream."""
    seq = 1000
    bitstreams = []
    for payloads, timestamp in frames:
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=VP8_PT,
                marker=int(i == len(payloads) - 1),
                sequence_number=seq,
                timestamp=timestamp,
                ssrc=SSRC,
                payload=payload,
            )
            seq += 1
            await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
        # VP8 payload descriptor for a non-extended picture id is 4 bytes here.
        bitstreams.append(b"".join(p[4:] for p in payloads))
    return bitstreams


async def start_receiver(pc: RTCPeerConnection, sink: list[EncodedFrame]) -> RTCRtpReceiver:
    receiver = pc.addTransceiver("video").receiver
    install_encoded_tap(receiver, "video", sink.append)
    # What setRemoteDescription does for a receiving transceiver, then what __connect does.
    receiver._track = RemoteStreamTrack(kind="video")
    await receiver.receive(
        RTCRtpReceiveParameters(
            codecs=[VP8],
            encodings=[RTCRtpDecodingParameters(ssrc=SSRC, payloadType=VP8_PT)],
        )
    )
    return receiver


async def test_tapped_receiver_yields_encoded_frames_and_never_decodes(
    pc: RTCPeerConnection,
) -> None:
    sink: list[EncodedFrame] = []
    receiver = await start_receiver(pc, sink)
    frames = vp8_frames(4)
    sent = await feed(receiver, frames)

    # The jitter buffer releases a frame when the next one starts: 3 of 4 come out.
    assert [f.data for f in sink] == sent[:3]
    assert [f.keyframe for f in sink] == [True, False, False]
    # RTP timestamps, relative to the first frame's (aiortc's TimestampMapper).
    assert [f.timestamp for f in sink] == [ts - frames[0][1] for _, ts in frames[:3]]
    assert {(f.kind, f.mime_type, f.clock_rate) for f in sink} == {("video", "video/VP8", 90000)}
    assert media_ssrc(receiver) == SSRC

    # aiortc's decoder thread is parked on the tap, and its track never got a frame.
    tap = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    for _ in range(100):
        if tap.waiting_threads:
            break
        await asyncio.sleep(0.01)
    assert {thread.name for thread in tap.waiting_threads} == {"video-decoder"}
    track = receiver.track
    assert isinstance(track, RemoteStreamTrack)
    assert track._queue.empty()

    # Stopping the receiver releases the thread, which ends the track (aiortc's lifecycle).
    await receiver.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), 1.0)
    assert tap.stopped


async def test_tap_must_precede_receive(pc: RTCPeerConnection) -> None:
    receiver = pc.addTransceiver("video").receiver
    receiver._track = RemoteStreamTrack(kind="video")
    await receiver.receive(
        RTCRtpReceiveParameters(
            codecs=[VP8],
            encodings=[RTCRtpDecodingParameters(ssrc=SSRC, payloadType=VP8_PT)],
        )
    )
    with pytest.raises(AiortcInternalsChanged, match="before receive"):
        install_encoded_tap(receiver, "video", lambda frame: None)
    await receiver.stop()


async def test_tap_is_idempotent(pc: RTCPeerConnection) -> None:
    receiver = pc.addTransceiver("audio").receiver
    first = install_encoded_tap(receiver, "audio", lambda frame: None)
    assert install_encoded_tap(receiver, "audio", lambda frame: None) is first


@pytest.mark.parametrize("fmt", [RTCP_PSFB_PLI, RTCP_PSFB_FIR])
async def test_sender_keyframe_requests_are_routed(pc: RTCPeerConnection, fmt: int) -> None:
    sender = pc.addTransceiver("video").sender
    requests: list[int] = []
    hook_keyframe_requests(sender, lambda: requests.append(1))
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=sender._ssrc))
    assert requests == [1]
    # Only this sender is hooked: another one keeps aiortc's own method.
    other = pc.addTransceiver("video").sender
    assert "_send_keyframe" not in vars(other)


async def test_receiver_pli_reaches_the_transport(
    pc: RTCPeerConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    transceiver = pc.addTransceiver("video")
    sent: list[bytes] = []

    async def capture(data: bytes) -> None:
        sent.append(data)

    monkeypatch.setattr(transceiver.receiver.transport, "_send_rtp", capture)
    await transceiver.receiver._send_rtcp_pli(SSRC)
    assert len(sent) == 1
    packet = sent[0]
    assert packet[1] == 206 and packet[0] & 0x1F == RTCP_PSFB_PLI  # RFC 4585 §6.1 PSFB/PLI
    assert int.from_bytes(packet[8:12], "big") == SSRC
