"""media/packet_path.py with real SRTP sessions and a real UDP socket on 127.0.0.1.

The aiortc objects it reaches into are stand-ins holding exactly the attributes it uses
(checked against the real ones by ``check_packet_path_internals`` and by
tests/integration/test_sfu.py, which runs this path between real aiortc peers).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from media.clock import SystemClock
from media.forwarding import Publication
from media.packet_path import LegSink, PacketPath, Route
from media.rtp import parse_header
from media.rtp_forwarding import RtpForwarder

PUB_TYPE, RTX_TYPE, SUB_TYPE, SUB_SSRC, PUB_SSRC, RTX_SSRC = 96, 97, 100, 0x5AB, 0x1234, 0x99
KEYFRAME = b"\x10\x00" + b"K" * 100  # VP8 descriptor S=1 PID=0, then P=0 (key frame)
DELTA = b"\x10\x01" + b"D" * 100


def session(key: bytes, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    policy = Policy(key=key, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    policy.allow_repeat_tx = True
    return Session(policy)


def rtp(seq: int, ts: int, payload: bytes, *, pt: int = PUB_TYPE, ext: bool = False) -> bytes:
    first = 0x90 if ext else 0x80
    ssrc = RTX_SSRC if pt == RTX_TYPE else PUB_SSRC
    header = struct.pack("!BBHII", first, pt, seq, ts, ssrc)
    if ext:  # a one-word header extension the subscriber's leg never negotiated
        header += b"\xbe\xde\x00\x01" + b"\x10\xaa\x00\x00"
    return header + payload


@dataclass
class Rig:
    """Publisher leg in, subscriber leg out, and the subscriber's socket."""

    publisher: Session  # what the publisher encrypts with
    subscriber: Session  # what the subscriber decrypts with
    socket: socket.socket
    path: PacketPath
    sink: LegSink
    forwarder: RtpForwarder
    publication: Publication
    sender: SimpleNamespace
    to_aiortc: list[bytes] = field(default_factory=list)
    injected: list[bytes] = field(default_factory=list)
    nacks: list[list[int]] = field(default_factory=list)

    def receive(self, data: bytes) -> None:
        """As the event loop delivers a datagram to the ICE socket's protocol."""
        (protocol,) = self.path._connection._protocols
        protocol.datagram_received(data, ("127.0.0.1", 9))

    async def sent(self, count: int, *, decrypt: bool = True) -> list[bytes]:
        loop = asyncio.get_running_loop()
        packets = []
        for _ in range(count):
            data = await asyncio.wait_for(loop.sock_recv(self.socket, 2048), 2)
            packets.append(self.subscriber.unprotect(data) if decrypt else data)
        return packets

    def nothing_sent(self) -> bool:
        try:
            self.socket.recv(2048)
        except BlockingIOError:
            return True
        return False


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    in_key, out_key = os.urandom(30), os.urandom(30)
    sub_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sub_socket.bind(("127.0.0.1", 0))
    sub_socket.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    pair = SimpleNamespace(
        protocol=SimpleNamespace(transport=transport), remote_addr=sub_socket.getsockname()
    )
    to_aiortc: list[bytes] = []
    injected: list[bytes] = []
    protocol = SimpleNamespace(datagram_received=lambda data, addr: to_aiortc.append(data))
    connection = SimpleNamespace(
        _nominated={1: pair},
        _protocols=[protocol],
        data_received=lambda data, component: to_aiortc.append(b"via connection " + data),
    )

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        injected.append(data)

    dtls = SimpleNamespace(
        _rx_srtp=session(in_key, outbound=False),
        _tx_srtp=session(out_key, outbound=True),
        transport=SimpleNamespace(_connection=connection),
        _handle_rtp_data=handle_rtp_data,
    )
    receiver = SimpleNamespace(_RTCRtpReceiver__remote_streams={})
    sender = SimpleNamespace(
        _ssrc=SUB_SSRC,
        _RTCRtpSender__packet_count=0,
        _RTCRtpSender__octet_count=0,
        _RTCRtpSender__rtp_timestamp=0,
        _RTCRtpSender__ntp_timestamp=0,
    )
    nacks: list[list[int]] = []
    publication = Publication(
        "video",
        lambda: True,
        keyframe_interval_s=1,
        clock=SystemClock(),
        send_nack=nacks.append,
    )
    forwarder = RtpForwarder("video")
    sink = LegSink(sender, dtls, forwarder, payload_type=SUB_TYPE)  # type: ignore[arg-type]
    forwarder.sink = sink
    publication.subscribe(forwarder)

    def route(rtx: bool) -> Route:
        return Route(
            publication,
            receiver,  # type: ignore[arg-type]
            mime_type="video/rtx" if rtx else "video/VP8",
            clock_rate=90_000,
            rtx=rtx,
        )

    routes = {PUB_TYPE: route(False), RTX_TYPE: route(True)}
    path = PacketPath(dtls, routes)  # type: ignore[arg-type]
    yield Rig(
        session(in_key, outbound=True),
        session(out_key, outbound=False),
        sub_socket,
        path,
        sink,
        forwarder,
        publication,
        sender,
        to_aiortc,
        injected,
        nacks,
    )
    transport.close()
    sub_socket.close()


async def test_a_packet_is_decrypted_rewritten_and_encrypted_for_the_subscriber(rig: Rig) -> None:
    rig.receive(rig.publisher.protect(rtp(500, 9000, KEYFRAME, ext=True)))
    (plain,) = await rig.sent(1)
    header = parse_header(plain)
    assert header is not None
    assert (header.payload_type, header.ssrc, header.sequence, header.timestamp) == (
        SUB_TYPE,
        SUB_SSRC,
        500,
        9000,
    )
    assert plain[header.payload_start :] == KEYFRAME  # the unknown extension is gone
    assert header.payload_start == 12
    counters = vars(rig.sender)
    assert counters["_RTCRtpSender__packet_count"] == 1
    assert counters["_RTCRtpSender__octet_count"] == len(KEYFRAME)
    assert counters["_RTCRtpSender__rtp_timestamp"] == 9000
    assert counters["_RTCRtpSender__ntp_timestamp"] > 0  # the sender report's NTP time
    assert rig.path.packets == 1 and not rig.to_aiortc


async def test_non_rtp_goes_to_aiortc_and_forgeries_are_dropped(rig: Rig) -> None:
    stun_like = b"\x00\x01\x00\x00" + os.urandom(16)
    rtcp = rig.publisher.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, PUB_SSRC))
    rig.receive(stun_like)
    rig.receive(rtcp)
    assert rig.to_aiortc == [stun_like, rtcp]

    forged = bytearray(rig.publisher.protect(rtp(1, 0, KEYFRAME)))
    forged[20] ^= 0xFF
    rig.receive(bytes(forged))
    unknown_type = rig.publisher.protect(rtp(2, 0, KEYFRAME, pt=111))
    rig.receive(unknown_type)
    assert rig.path.rejected == 2 and rig.path.packets == 0
    await asyncio.sleep(0.05)
    assert rig.nothing_sent()


async def test_video_waits_for_a_keyframe(rig: Rig) -> None:
    rig.receive(rig.publisher.protect(rtp(10, 0, DELTA)))
    rig.receive(rig.publisher.protect(rtp(11, 3000, KEYFRAME)))
    rig.receive(rig.publisher.protect(rtp(12, 6000, DELTA)))
    sent = [parse_header(p) for p in await rig.sent(2)]
    assert [h.sequence for h in sent if h is not None] == [11, 12]
    assert rig.forwarder.stats().frames_skipped == 1


async def test_a_nack_is_answered_from_history_or_sent_on_to_the_publisher(rig: Rig) -> None:
    for seq in range(100, 104):
        payload = KEYFRAME if seq == 100 else DELTA
        rig.receive(rig.publisher.protect(rtp(seq, 3000 * seq, payload)))
    first = await rig.sent(4, decrypt=False)

    # The very same SRTP packet (the subscriber never got it, so its replay window takes it).
    await rig.sink.retransmit(102)
    (again,) = await rig.sent(1, decrypt=False)
    assert again == first[2]
    assert rig.sink.retransmitted == 1

    # 104 never reached the SFU: the publisher is asked for it under its own number.
    await rig.sink.retransmit(104)
    assert rig.nacks == [[104]]


async def test_rtx_from_the_publisher_is_unwrapped(rig: Rig) -> None:
    rig.receive(rig.publisher.protect(rtp(200, 0, KEYFRAME)))
    # RFC 4588: RTX payload = original sequence number + original payload.
    rtx = rtp(7, 3000, (201).to_bytes(2, "big") + DELTA, pt=RTX_TYPE)
    rig.receive(rig.publisher.protect(rtx))
    rig.receive(rig.publisher.protect(rtp(8, 3000, b"\x00\x01", pt=RTX_TYPE)))  # padding-only
    sent = await rig.sent(2)
    header = parse_header(sent[1])
    assert header is not None
    assert (header.sequence, header.ssrc, header.payload_type) == (201, SUB_SSRC, SUB_TYPE)
    assert sent[1][header.payload_start :] == DELTA
    await asyncio.sleep(0.05)
    assert rig.nothing_sent()


async def test_a_recorded_publication_also_feeds_aiortc_its_packets(rig: Rig) -> None:
    frames: list[Any] = []
    rig.publication.add_tap(frames.append)
    packet = rtp(300, 0, KEYFRAME)
    rig.receive(rig.publisher.protect(packet))
    await rig.sent(1)
    await asyncio.sleep(0)
    assert rig.injected == [packet]


async def test_a_closed_socket_drops_video_until_the_next_keyframe(rig: Rig) -> None:
    rig.receive(rig.publisher.protect(rtp(400, 0, KEYFRAME)))
    await rig.sent(1)
    pair = rig.path._connection._nominated[1]
    pair.protocol.transport.close()
    await asyncio.sleep(0)
    rig.receive(rig.publisher.protect(rtp(401, 3000, DELTA)))
    stats = rig.forwarder.stats()
    assert (stats.packets_forwarded, stats.frames_dropped) == (1, 1)


async def test_what_reaches_the_connection_directly_is_forwarded_too(rig: Rig) -> None:
    # A protocol aioice made after the hooks were installed delivers to the connection.
    rig.path._connection.data_received(rig.publisher.protect(rtp(600, 0, KEYFRAME)), 1)
    (plain,) = await rig.sent(1)
    assert plain.endswith(KEYFRAME) and not rig.to_aiortc
    rig.path._connection.data_received(b"\x00\x01", 1)
    assert rig.to_aiortc == [b"via connection \x00\x01"]
