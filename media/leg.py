"""One party's peer connection with the SFU: what it publishes and what it is sent."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc import (
    RTCConfiguration,
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from media.clock import Clock
from media.codecs import pinned_codecs
from media.errors import NegotiationError
from media.forwarding import ForwardingTrack, Publication, PublicationStats
from media.ice import IcePolicy
from media.packet_path import LegSink, PacketPath, Route, check_packet_path_internals
from media.rtp_forwarding import RtpForwarder
from media.rtp_hooks import (
    EncodedFrameTap,
    hook_keyframe_requests,
    install_encoded_tap,
    media_ssrc,
    send_nack,
    send_pli,
)
from media.settings import MediaSettings
from media.subscription import SubscriptionStats

log = logging.getLogger(__name__)

Slot = tuple[str, int]
"""(kind, ordinal among the offer's m-lines of that kind): how legs' tracks are matched."""

StateCallback = Callable[[str, str, str], None]
"""on_connection_state(call_id, party, state) with the W3C RTCPeerConnectionState names."""

_NEGOTIATION_ERRORS = (
    ValueError,
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
)


def slot_name(slot: Slot) -> str:
    kind, ordinal = slot
    return kind if ordinal == 0 else f"{kind}#{ordinal}"


def offer_media_kinds(offer_sdp: str) -> list[str]:
    """The kind of each m-line of an SDP offer, in order (RFC 8866 §5.14)."""
    return [line[2:].split(" ", 1)[0] for line in offer_sdp.splitlines() if line.startswith("m=")]


@dataclass(frozen=True, slots=True)
class LegStats:
    party: str
    connection_state: str
    published: dict[str, PublicationStats]
    subscribed: dict[str, SubscriptionStats]
    decoded_frames: int
    """Frames aiortc decoded for this leg: always 0 unless the encoded taps broke."""
    parked_decoder_threads: int
    """aiortc decoder threads parked on our taps (they wait for stop, never decode)."""


class Leg:
    """A party's ``RTCPeerConnection``: one ``Publication`` and one ``ForwardingTrack`` per
    audio/video m-line of its offer, all encoded, nothing decoded."""

    def __init__(
        self,
        call_id: str,
        party: str,
        *,
        settings: MediaSettings,
        configuration: RTCConfiguration,
        ice_policy: IcePolicy,
        clock: Clock,
        on_state: StateCallback | None = None,
    ) -> None:
        self.call_id = call_id
        self.party = party
        self.pc = RTCPeerConnection(configuration)
        self.publications: dict[Slot, Publication] = {}
        self.subscriptions: dict[Slot, ForwardingTrack | RtpForwarder] = {}
        self._transceivers: dict[Slot, RTCRtpTransceiver] = {}
        self._paths: list[PacketPath] = []
        self._settings = settings
        self._ice_policy = ice_policy
        self._clock = clock
        self._on_state = on_state
        self._taps: list[EncodedFrameTap] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._decoded = 0
        self._closed = False
        self.pc.on("track", self._drain)
        self.pc.on("connectionstatechange", self._state_changed)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the party's offer and return the SFU's answer SDP."""
        kinds = [k for k in offer_media_kinds(offer_sdp) if k in ("audio", "video")]
        if not kinds:
            raise NegotiationError("the offer has no audio or video m-line")
        ordinals: Counter[str] = Counter()
        try:
            for kind in kinds:
                slot = (kind, ordinals[kind])
                ordinals[kind] += 1
                self._add_slot(slot)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self._check_all_tapped()
            self._ice_policy.apply(self.pc)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            if self._settings.forwarding == "rtp":
                self._take_packet_path()
        except _NEGOTIATION_ERRORS as exc:
            raise NegotiationError(f"cannot answer {self.party!r}: {exc}") from exc
        local = self.pc.localDescription
        if local is None:  # pragma: no cover - aiortc sets it or raises
            raise NegotiationError("aiortc produced no local description")
        return local.sdp

    async def add_candidate(self, candidate: str, sdp_mid: str | None, index: int | None) -> None:
        """A trickled remote candidate (``candidate:...`` line); empty = end of candidates."""
        text = candidate.strip().removeprefix("a=").removeprefix("candidate:")
        try:
            if not text:
                await self.pc.addIceCandidate(None)
                return
            ice = candidate_from_sdp(text)
            ice.sdpMid = sdp_mid
            ice.sdpMLineIndex = index
            await self.pc.addIceCandidate(ice)
        except (*_NEGOTIATION_ERRORS, AssertionError, IndexError) as exc:
            raise NegotiationError(f"bad ICE candidate from {self.party!r}: {exc}") from exc

    def stats(self) -> LegStats:
        return LegStats(
            party=self.party,
            connection_state=self.pc.connectionState,
            published={slot_name(s): p.stats() for s, p in self.publications.items()},
            subscribed={slot_name(s): t.stats() for s, t in self.subscriptions.items()},
            decoded_frames=self._decoded,
            parked_decoder_threads=len(self.decoder_threads),
        )

    @property
    def decoder_threads(self) -> frozenset[threading.Thread]:
        """aiortc's decoder threads of this leg, parked on the encoded taps."""
        # tuple(): one atomic copy, as decoder threads add themselves concurrently.
        return frozenset(thread for tap in self._taps for thread in tuple(tap.waiting_threads))

    async def close(self) -> None:
        """Stop forwarding and close the peer connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for subscription in self.subscriptions.values():
            subscription.stop()
        for transceiver in self._transceivers.values():
            if transceiver.sender.track is not None:
                transceiver.sender.track.stop()  # the idle track under RTP forwarding
        for publication in self.publications.values():
            publication.close()
        for path in self._paths:
            path.close()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _add_slot(self, slot: Slot) -> None:
        kind = slot[0]
        # Under RTP forwarding this track never gets a frame: aiortc's sender just waits on
        # it, while LegSink writes the packets.
        track = ForwardingTrack(kind, capacity=self._settings.queue_frames)
        transceiver = self.pc.addTransceiver(track, direction="sendrecv")
        transceiver.setCodecPreferences(pinned_codecs(kind, self._settings.video_codec))
        receiver = transceiver.receiver
        publication = Publication(
            kind,
            lambda: self._request_pli(receiver, publication),
            keyframe_interval_s=self._settings.keyframe_interval_s,
            clock=self._clock,
            send_nack=lambda sequences: self._request_nack(receiver, publication, sequences),
        )
        self._taps.append(install_encoded_tap(receiver, kind, publication.on_frame))
        subscription: ForwardingTrack | RtpForwarder = track
        if self._settings.forwarding == "rtp":
            check_packet_path_internals(transceiver.sender, receiver)
            subscription = RtpForwarder(kind)
        hook_keyframe_requests(transceiver.sender, subscription.request_keyframe)
        self.publications[slot] = publication
        self.subscriptions[slot] = subscription
        self._transceivers[slot] = transceiver

    def _take_packet_path(self) -> None:
        """RTP forwarding: route each negotiated payload type to its publication and give
        each forwarder a sink on this leg (media/packet_path.py)."""
        routes: dict[RTCDtlsTransport, dict[int, Route]] = {}
        for slot, transceiver in self._transceivers.items():
            dtls = transceiver.receiver.transport
            codecs = transceiver._codecs
            send_type = codecs[0].payloadType if codecs else None
            if dtls is None or send_type is None:
                raise NegotiationError(f"no transport or codec negotiated for {slot_name(slot)}")
            for codec in codecs:
                if codec.payloadType is None:
                    continue
                routes.setdefault(dtls, {})[codec.payloadType] = Route(
                    self.publications[slot],
                    transceiver.receiver,
                    mime_type=codec.mimeType,
                    clock_rate=codec.clockRate,
                    rtx=codec.mimeType.lower() == "video/rtx",
                )
            forwarder = self.subscriptions[slot]
            if isinstance(forwarder, RtpForwarder):
                forwarder.sink = LegSink(
                    transceiver.sender, dtls, forwarder, payload_type=send_type
                )
        self._paths = [PacketPath(dtls, by_type) for dtls, by_type in routes.items()]

    def _check_all_tapped(self) -> None:
        # setRemoteDescription creates a transceiver for any m-line we did not pre-create;
        # its receiver would decode, which the SFU never does.
        if len(self.pc.getTransceivers()) != len(self._taps):
            raise NegotiationError("the offer has media sections the SFU did not expect")

    def _request_pli(self, receiver: RTCRtpReceiver, publication: Publication) -> bool:
        # SSRC 0 is valid (RFC 3550): only None means unknown.
        ssrc = publication.ssrc if publication.ssrc is not None else media_ssrc(receiver)
        if ssrc is None or self._closed:
            return False
        self._spawn(send_pli(receiver, ssrc))
        return True

    def _request_nack(
        self, receiver: RTCRtpReceiver, publication: Publication, sequences: list[int]
    ) -> None:
        if publication.ssrc is not None and not self._closed:
            self._spawn(send_nack(receiver, publication.ssrc, sequences))

    def _drain(self, track: MediaStreamTrack) -> None:
        # Every receiver's track is consumed: an unread aiortc track queues without bound.
        # With the encoded tap its queue only ever gets the end-of-stream sentinel.
        self._spawn(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self._decoded += 1
                if self._decoded == 1:
                    log.error("media: %s/%s: aiortc decoded a frame", self.call_id, self.party)
        except MediaStreamError:
            pass

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.info("media: %s/%s connection %s", self.call_id, self.party, state)
        if self._on_state is not None:
            try:
                self._on_state(self.call_id, self.party, state)
            except Exception:
                log.exception("media: connection state callback failed")

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
