"""Hooks into aiortc's RTP receiver and sender so media stays encoded end to end.

aiortc has no public API for either direction, so this module and media/packet_path.py (RTP
forwarding's way around aiortc's packet path) are the two that touch its internals. It
relies on aiortc **1.16.0** (``AIORTC_VERIFIED``; ``check_aiortc_internals``
runs when an ``Sfu`` is built, and tests/unit/test_media_rtp_hooks.py drives real RTP through
a hooked receiver, so an aiortc upgrade that moves any of these fails loudly):

Receiver (aiortc/rtcrtpreceiver.py)
    ``RTCRtpReceiver._handle_rtp_packet`` depayloads each RTP packet, feeds the jitter buffer
    and hands every complete encoded frame to its decoder thread with
    ``self.__decoder_queue.put((codec, jitter_frame))`` (name-mangled
    ``_RTCRtpReceiver__decoder_queue``, a ``queue.Queue``). ``receive()`` starts
    ``decoder_worker``, which loops on ``input_q.get()``; ``__stop_decoder()`` puts ``None``
    and joins the thread, whose exit ends the receiver's ``RemoteStreamTrack``.

    ``EncodedFrameTap`` stands in for that queue (installed before ``receive()``): ``put``
    turns each encoded frame into an ``EncodedFrame`` for our sink, on the event loop, and
    never queues it; the decoder thread's ``get()`` just waits for the stop sentinel and
    returns ``None``. Nothing is ever decoded, yet the receiver's lifecycle (stop, BYE,
    disconnect ending its track) is aiortc's own.

Receiver PLI
    ``RTCRtpReceiver._send_rtcp_pli(media_ssrc)`` (coroutine) sends an RTCP PLI; the media
    SSRC comes from the public ``getSynchronizationSources()``.

Sender (aiortc/rtcrtpsender.py)
    ``RTCRtpSender._handle_rtcp_packet`` calls ``self._send_keyframe()`` on PLI and FIR. That
    only flags its encoder, which never runs for ``av.Packet`` input (it calls the codec's
    ``pack()`` instead), so ``hook_keyframe_requests`` sets an instance attribute that routes
    the request to the forwarding track's publisher instead. No class or module is patched.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender

from media.codecs import is_keyframe
from media.errors import AiortcInternalsChanged

log = logging.getLogger(__name__)

AIORTC_VERIFIED: Final = "1.16.0"
_DECODER_QUEUE: Final = "_RTCRtpReceiver__decoder_queue"
_RECEIVER_STARTED: Final = "_RTCRtpReceiver__started"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One complete encoded frame, as aiortc's jitter buffer assembled it."""

    kind: str
    mime_type: str
    clock_rate: int
    timestamp: int
    """RTP timestamp relative to the stream's first frame (aiortc's TimestampMapper)."""
    data: bytes
    keyframe: bool


EncodedFrameSink = Callable[[EncodedFrame], None]


class EncodedFrameTap:
    """Duck-types the ``queue.Queue`` an ``RTCRtpReceiver`` feeds its decoder thread with."""

    def __init__(self, kind: str, sink: EncodedFrameSink) -> None:
        self.kind = kind
        self._sink = sink
        self._stopped = threading.Event()
        self.frames = 0
        self.waiting_threads: set[threading.Thread] = set()
        """aiortc decoder threads parked on this tap (tests prove they never decode)."""

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # Called on the event loop by RTCRtpReceiver._handle_rtp_packet (a frame) and by
    # RTCRtpReceiver.__stop_decoder (None, the stop sentinel).
    def put(
        self, item: tuple[Any, Any] | None, block: bool = True, timeout: float | None = None
    ) -> None:
        if item is None:
            self._stopped.set()
            return
        if self._stopped.is_set():
            return
        codec, jitter_frame = item
        mime_type: str = codec.mimeType
        data: bytes = jitter_frame.data
        frame = EncodedFrame(
            kind=self.kind,
            mime_type=mime_type,
            clock_rate=int(codec.clockRate),
            timestamp=int(jitter_frame.timestamp),
            data=data,
            keyframe=is_keyframe(mime_type, data),
        )
        self.frames += 1
        try:
            self._sink(frame)
        except Exception:
            # An exception here would unwind aiortc's transport receive loop.
            log.exception("media: encoded frame sink failed (%s)", self.kind)

    # Called on the decoder thread by aiortc's decoder_worker: park until stopped, then
    # hand back the sentinel so the worker ends the receiver's track and exits.
    def get(self, block: bool = True, timeout: float | None = None) -> None:
        self.waiting_threads.add(threading.current_thread())
        self._stopped.wait()


def check_aiortc_internals() -> None:
    """Raise ``AiortcInternalsChanged`` unless the installed aiortc has what we hook."""
    if aiortc.__version__ != AIORTC_VERIFIED:
        log.warning(
            "media: aiortc %s installed, encoded-frame hooks verified on %s: run "
            "tests/unit/test_media_rtp_hooks.py",
            aiortc.__version__,
            AIORTC_VERIFIED,
        )
    problems = []
    if not callable(getattr(RTCRtpReceiver, "_handle_rtp_packet", None)):
        problems.append("RTCRtpReceiver._handle_rtp_packet is gone")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        problems.append("RTCRtpReceiver._send_rtcp_pli is gone")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        problems.append("RTCRtpSender._send_keyframe is gone")
    if problems:
        raise AiortcInternalsChanged(
            f"aiortc {aiortc.__version__} (hooks verified on {AIORTC_VERIFIED}): "
            + "; ".join(problems)
        )


def install_encoded_tap(
    receiver: RTCRtpReceiver, kind: str, sink: EncodedFrameSink
) -> EncodedFrameTap:
    """Make ``receiver`` hand its encoded frames to ``sink`` instead of its decoder.

    Must run before ``receiver.receive()`` (i.e. before the peer connection connects); an
    already tapped receiver keeps its tap.
    """
    current = getattr(receiver, _DECODER_QUEUE, None)
    if isinstance(current, EncodedFrameTap):
        return current
    if not isinstance(current, queue.Queue):
        raise AiortcInternalsChanged(
            f"aiortc {aiortc.__version__}: RTCRtpReceiver has no decoder queue to tap "
            f"({_DECODER_QUEUE} is {type(current).__name__}; verified on {AIORTC_VERIFIED})"
        )
    if getattr(receiver, _RECEIVER_STARTED, None) is not False:
        raise AiortcInternalsChanged(
            "RTCRtpReceiver already started: the encoded tap must be installed before receive()"
        )
    tap = EncodedFrameTap(kind, sink)
    setattr(receiver, _DECODER_QUEUE, tap)
    return tap


def media_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the publisher most recently sent on (public API), if any yet."""
    sources = receiver.getSynchronizationSources()
    if not sources:
        return None
    return max(sources, key=lambda s: s.timestamp).source


def send_pli(receiver: RTCRtpReceiver, ssrc: int) -> Awaitable[None]:
    """RTCP Picture Loss Indication to the publisher (RFC 4585 §6.3.1)."""
    send: Callable[[int], Awaitable[None]] = receiver._send_rtcp_pli
    return send(ssrc)


def send_nack(receiver: RTCRtpReceiver, ssrc: int, sequences: list[int]) -> Awaitable[None]:
    """RTCP generic NACK to the publisher (RFC 4585 §6.2.1)."""
    send: Callable[[int, list[int]], Awaitable[None]] = receiver._send_rtcp_nack
    return send(ssrc, sequences)


def hook_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """Route the PLI/FIR a subscriber sends to ``sender`` to ``on_request``."""
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise AiortcInternalsChanged(
            f"aiortc {aiortc.__version__}: RTCRtpSender._send_keyframe is gone "
            f"(verified on {AIORTC_VERIFIED})"
        )
    # Instance attribute: shadows the method for this sender only.
    sender._send_keyframe = on_request  # type: ignore[method-assign]
