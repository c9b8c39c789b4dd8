"""RTP forwarding's way around aiortc's per-packet Python (the one other module, with
media/rtp_hooks.py, that touches aiortc internals; verified on aiortc 1.16.0 / aioice 0.13).

aiortc hands every datagram from aioice's queue to its DTLS loop, which decrypts it, builds
an ``RtpPacket``, and gives it to the receiver (statistics, bitrate estimator, NACK
generator, jitter buffer, depacketizer); our sender then packetizes the frame again. Here a
leg's media packets are taken off that path where aioice delivers them
(``Connection.data_received``): decrypted with the DTLS transport's SRTP session, routed by
payload type to their ``Publication``, and each ``RtpForwarder``'s output is encrypted with
the subscriber leg's SRTP session and written straight to its nominated ICE pair's socket.

Everything else (STUN, DTLS, RTCP, packets before the handshake) still goes to aiortc, so
its control plane is untouched: RTCP receiver reports to the publisher stay correct because
we feed the receiver's per-SSRC statistics; sender reports to the subscriber stay correct
because we keep the sender's packet/octet counters and its RTP/NTP timestamp pair; a
subscriber's NACK is answered from ``LegSink``'s history of sent packets, or NACKed on to
the publisher; a recorded call also hands each packet to aiortc's receiver, whose encoded
frames reach the recorder through media/rtp_hooks.py's tap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Final

import pylibsrtp
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.clock import current_ms, current_ntp_time
from aiortc.rtcrtpreceiver import StreamStatistics

from media.errors import AiortcInternalsChanged
from media.forwarding import Publication
from media.rtp import build, is_rtcp, parse_header, starts_keyframe
from media.rtp_forwarding import RtpForwarder

log = logging.getLogger(__name__)

HISTORY_PACKETS: Final = 256
"""Sent video packets kept per subscriber for NACKs: about 2.5 s at 1 Mbps (~300 KB), far
more than a NACK's round trip."""
SEND_BUFFER_LIMIT: Final = 256 * 1024
"""Bytes a socket may hold unsent before packets to it are dropped (video then restarts
at a keyframe): a slow subscriber never grows our memory."""

_REMOTE_STREAMS: Final = "_RTCRtpReceiver__remote_streams"
_PACKETS: Final = "_RTCRtpSender__packet_count"
_OCTETS: Final = "_RTCRtpSender__octet_count"
_RTP_TS: Final = "_RTCRtpSender__rtp_timestamp"
_NTP_TS: Final = "_RTCRtpSender__ntp_timestamp"


class _Seen:
    """The two fields aiortc's ``StreamStatistics.add`` reads from a packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


class Route:
    """Where packets of one payload type of a leg go: a publication (RTX is unwrapped)."""

    def __init__(
        self,
        publication: Publication,
        receiver: RTCRtpReceiver,
        *,
        mime_type: str,
        clock_rate: int,
        rtx: bool,
    ) -> None:
        self.publication = publication
        self.mime_type = mime_type
        self.clock_rate = clock_rate
        self.rtx = rtx
        self._video = publication.kind == "video"
        self._streams: dict[int, StreamStatistics] = vars(receiver)[_REMOTE_STREAMS]
        self._seen = _Seen()

    def receive(
        self,
        ssrc: int,
        sequence: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
    ) -> None:
        if self.rtx:
            # RFC 4588 §4: the original sequence number, then the original payload.
            media_ssrc = self.publication.ssrc
            if len(payload) <= 2 or media_ssrc is None:
                return  # padding-only probes, or nothing to repair yet
            sequence = int.from_bytes(payload[:2], "big")
            payload = payload[2:]
            ssrc = media_ssrc
        elif not self.publication.tapped:  # else aiortc's receiver counts it itself
            # What the receiver's RTCP receiver reports tell the publisher (loss, jitter).
            stats = self._streams.get(ssrc)
            if stats is None:
                stats = self._streams[ssrc] = StreamStatistics(self.clock_rate)
            seen = self._seen
            seen.sequence_number = sequence
            seen.timestamp = timestamp
            stats.add(seen)  # type: ignore[arg-type]
        self.publication.on_rtp(
            ssrc,
            sequence,
            timestamp,
            marker,
            payload,
            keyframe_start=starts_keyframe(self.mime_type, payload) if self._video else True,
            clock_rate=self.clock_rate,
        )


class PacketPath:
    """Takes one transport's incoming RTP off aiortc's path (see the module docstring)."""

    def __init__(self, dtls: RTCDtlsTransport, routes: dict[int, Route]) -> None:
        self._dtls = dtls
        self._routes = routes
        self._connection = ice_connection(dtls)
        self._aiortc_path: Callable[[bytes, int], None] = self._connection.data_received
        self._tasks: set[asyncio.Future[None]] = set()
        self.packets = 0
        self.rejected = 0
        """Packets dropped here: SRTP authentication failed, malformed, unknown type."""
        # Instance attributes, shadowing the methods on these objects only. The socket's
        # protocols first: the event loop looks datagram_received up per datagram, and
        # aioice's own would try to parse every RTP packet as STUN before passing it on.
        # The connection's data_received catches what a protocol made later delivers.
        for protocol in getattr(self._connection, "_protocols", ()):
            protocol.datagram_received = functools.partial(
                self._datagram_received, protocol.datagram_received
            )
        self._connection.data_received = self._data_received

    def _datagram_received(
        self, aioice_path: Callable[[bytes, Any], None], data: bytes, addr: Any
    ) -> None:
        if not self._forwarded(data):
            aioice_path(data, addr)

    def _data_received(self, data: bytes, component: int) -> None:
        if not self._forwarded(data):
            self._aiortc_path(data, component)

    def _forwarded(self, data: bytes) -> bool:
        """Handle ``data`` if it is SRTP media (True), else leave it to aioice/aiortc."""
        rx = self._dtls._rx_srtp
        if rx is None or not data or not 127 < data[0] < 192 or is_rtcp(data):
            return False
        try:
            plain: bytes = rx.unprotect(data)
        except pylibsrtp.Error:
            self.rejected += 1  # a replay or a forgery: aiortc drops these too
            return True
        header = parse_header(plain)
        route = self._routes.get(header.payload_type) if header is not None else None
        if header is None or route is None:
            self.rejected += 1
            return True
        self.packets += 1
        try:
            route.receive(
                header.ssrc,
                header.sequence,
                header.timestamp,
                header.marker,
                plain[header.payload_start : header.payload_end],
            )
        except Exception:
            # Raised here, it would end up in the event loop's datagram callback.
            log.exception("media: forwarding a packet failed")
        if route.publication.tapped:
            # A recorded call: aiortc's receiver assembles frames for the recorder too.
            self._spawn(self._dtls._handle_rtp_data(plain, arrival_time_ms=current_ms()))
        return True

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class LegSink:
    """A subscriber leg's outgoing stream on one m-line: the ``RtpSink`` of its forwarder.

    Shadows the aiortc sender's ``_retransmit`` (a NACK from the subscriber) on that sender
    only; aiortc's sender keeps sending RTCP sender reports from the counters kept here.
    """

    def __init__(
        self,
        sender: RTCRtpSender,
        dtls: RTCDtlsTransport,
        forwarder: RtpForwarder,
        *,
        payload_type: int,
    ) -> None:
        self._dtls = dtls
        self._connection = ice_connection(dtls)
        self._forwarder = forwarder
        self._payload_type = payload_type
        self._ssrc: int = sender._ssrc
        self._counters: dict[str, Any] = vars(sender)
        self._history: list[tuple[int, bytes] | None] = (
            [None] * HISTORY_PACKETS if forwarder.kind == "video" else []
        )
        self.retransmitted = 0
        sender._retransmit = self.retransmit  # type: ignore[method-assign,assignment]

    def send(self, sequence: int, timestamp: int, marker: bool, payload: bytes) -> bool:
        tx = self._dtls._tx_srtp
        pair = self._connection._nominated.get(1)
        if tx is None or pair is None:
            return False
        transport = pair.protocol.transport
        if not _writable(transport):
            return False
        data: bytes = tx.protect(
            build(self._payload_type, marker, sequence, timestamp, self._ssrc) + payload
        )
        transport.sendto(data, pair.remote_addr)
        if self._history:
            self._history[sequence % HISTORY_PACKETS] = (sequence, data)
        counters = self._counters
        counters[_PACKETS] += 1
        counters[_OCTETS] += len(payload)
        if counters[_RTP_TS] != timestamp:
            # The RTP/NTP pair of our next sender report: what the subscriber syncs A/V by.
            counters[_RTP_TS] = timestamp
            counters[_NTP_TS] = current_ntp_time()
        return True

    async def retransmit(self, sequence: int) -> None:
        """The subscriber NACKed ``sequence``: resend it, or ask the publisher for it."""
        entry = self._history[sequence % HISTORY_PACKETS] if self._history else None
        pair = self._connection._nominated.get(1)
        if entry is not None and entry[0] == sequence and pair is not None:
            transport = pair.protocol.transport
            if _writable(transport):
                # The same SRTP packet again: its index was already authenticated once.
                transport.sendto(entry[1], pair.remote_addr)
                self.retransmitted += 1
            return
        source = self._forwarder.source
        original = self._forwarder.source_sequence(sequence)
        if source is not None and original is not None:
            source.request_retransmission([original])


def _writable(transport: Any) -> bool:
    """Open, and not holding more than SEND_BUFFER_LIMIT unsent (asyncio's datagram
    transports buffer without bound; aioice's TurnTransport has neither method)."""
    if transport is None:
        return False
    closing = getattr(transport, "is_closing", None)
    if closing is not None and closing():
        return False
    buffered = getattr(transport, "get_write_buffer_size", None)
    return buffered is None or buffered() <= SEND_BUFFER_LIMIT


def ice_connection(dtls: RTCDtlsTransport) -> Any:
    """The aioice ``Connection`` under an aiortc DTLS transport."""
    connection = getattr(dtls.transport, "_connection", None)
    if connection is None or not hasattr(connection, "_nominated"):
        raise AiortcInternalsChanged("RTCIceTransport._connection (aioice) is gone")
    return connection


def check_packet_path_internals(sender: RTCRtpSender, receiver: RTCRtpReceiver) -> None:
    """Raise ``AiortcInternalsChanged`` unless these aiortc objects have what we use."""
    sender_vars = vars(sender)
    missing = [name for name in (_PACKETS, _OCTETS, _RTP_TS, _NTP_TS) if name not in sender_vars]
    if not isinstance(vars(receiver).get(_REMOTE_STREAMS), dict):
        missing.append(_REMOTE_STREAMS)
    for owner, name in (
        (sender, "_retransmit"),
        (sender, "_ssrc"),
        (receiver, "_send_rtcp_nack"),
        (RTCDtlsTransport, "_handle_rtp_data"),
    ):
        if not hasattr(owner, name):
            missing.append(name)
    if missing:
        raise AiortcInternalsChanged("RTP forwarding needs " + ", ".join(missing))
