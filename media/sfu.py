"""The SFU: per call, two legs whose encoded media is forwarded to each other (DESIGN §6).

Sans hub: the hub calls ``answer`` with each party's SDP offer, relays the answer back,
passes trickled candidates to ``add_candidate`` and ends media with ``close_call``.
``answer(..., record=True)`` also records the call (media/recording/): the hub decides,
from ``media.recording`` and the parties' consent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiortc import RTCConfiguration

from media.clock import Clock, SystemClock, wait
from media.errors import CallClosed, CallFull, NotSupported, SfuClosed, UnknownLeg
from media.ice import IcePolicy, rtc_configuration
from media.leg import Leg, LegStats, StateCallback
from media.recording.files import Recording, scan_recordings
from media.recording.recorder import CallRecorder, RecordingStats
from media.rtp_hooks import check_aiortc_internals
from media.settings import MediaSettings

log = logging.getLogger(__name__)

MAX_PARTIES = 2
CLOSE_TIMEOUT_S = 1.0
RECORDING_CLOSE_TIMEOUT_S = 10.0
"""close_call waits this long for a recording's files to be closed, then lets it finish."""


MediaFailed = Callable[[str, str], Awaitable[None]]
"""on_media_failed(call_id, party): the party's media did not connect in time."""


@dataclass(frozen=True, slots=True)
class CallStats:
    call_id: str
    legs: dict[str, LegStats]
    recording: RecordingStats | None = None


class CallMedia:
    """One call's media: at most two legs, each forwarding to the other."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.legs: dict[str, Leg] = {}
        self.closed = False
        self.lock = asyncio.Lock()
        self.recorder: CallRecorder | None = None
        self.watchdogs: dict[str, asyncio.Task[None]] = {}
        """Per party: running while its current leg is not connected (media/sfu.py)."""

    def other(self, party: str) -> Leg | None:
        return next((leg for p, leg in self.legs.items() if p != party), None)

    def stats(self) -> CallStats:
        legs = {p: leg.stats() for p, leg in self.legs.items()}
        recording = self.recorder.stats() if self.recorder is not None else None
        return CallStats(self.call_id, legs, recording)

    def wire(self) -> None:
        """Subscribe each leg's forwarding tracks to the other leg's matching publications.

        Tracks are matched by (kind, ordinal). A party that re-offered has a new leg whose
        publications replace the old ones as the other side's source; the other side's
        peer connection and SDP are untouched (its senders keep their tracks).
        """
        for party, leg in self.legs.items():
            other = self.other(party)
            for slot, track in leg.subscriptions.items():
                source = other.publications.get(slot) if other is not None else None
                if source is None:
                    if track.source is not None:
                        track.source.unsubscribe(track)
                elif track.source is not source:
                    source.subscribe(track)


class Sfu:
    """Forwarding SFU for 1:1 calls. Encoded frames only: nothing is decoded or re-encoded.

    ``configuration`` carries the ICE servers the SFU's own peer connections use; its
    ``iceServers`` must be explicit (``[]`` is fine) so aiortc never falls back to a
    public STUN server.
    """

    def __init__(
        self,
        settings: MediaSettings,
        configuration: RTCConfiguration,
        *,
        clock: Clock | None = None,
        on_connection_state: StateCallback | None = None,
        on_media_failed: MediaFailed | None = None,
    ) -> None:
        check_aiortc_internals()
        self.settings = settings
        self._configuration = rtc_configuration(configuration)
        self._ice_policy = IcePolicy.from_settings(settings)
        self._clock: Clock = clock or SystemClock()
        self._on_state = on_connection_state
        self.on_media_failed = on_media_failed
        """Told when a party's media did not connect in time; settable after construction
        (the hub that ends the call is built after the SFU)."""
        self._calls: dict[str, CallMedia] = {}
        self._forwarded_before = (0, 0)  # (frames, packets) of the calls already closed
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False
        self._recorded: dict[Path, Recording] = {}
        self._recording_dirs: set[Path] = set()

    def call(self, call_id: str) -> CallMedia | None:
        return self._calls.get(call_id)

    @property
    def call_ids(self) -> frozenset[str]:
        return frozenset(self._calls)

    async def answer(
        self, call_id: str, party: str, offer_sdp: str, *, record: bool = False
    ) -> str:
        """Answer ``party``'s offer in ``call_id``; returns the answer SDP.

        A second offer from the same party (a reconnect) replaces its peer connection; the
        other party's forwarding switches to the new one without renegotiation.
        ``record=True`` starts recording the call (both parties, from now until
        ``close_call``) unless it already is; ``record=False`` never stops a recording.
        Raises ``NegotiationError``, ``CallFull``, ``CallClosed``, ``SfuClosed``, or
        ``NotSupported`` for ``record=True`` when ``media.recording`` is off.
        """
        if self._closed:
            raise SfuClosed("the SFU is closed")
        if record and (self.settings.recording == "off" or self.settings.record_dir is None):
            raise NotSupported("recording is off (media.recording)")
        call = self._calls.get(call_id)
        if call is None:
            call = self._calls[call_id] = CallMedia(call_id)
        async with call.lock:
            if party not in call.legs and len(call.legs) >= MAX_PARTIES:
                raise CallFull(call_id, party)
            leg = Leg(
                call_id,
                party,
                settings=self.settings,
                configuration=rtc_configuration(self._configuration),
                ice_policy=self._ice_policy,
                clock=self._clock,
                on_state=lambda c, p, state: self._leg_state(call, leg, state),
            )
            try:
                answer_sdp = await leg.negotiate(offer_sdp)
            except BaseException:
                await leg.close()
                if not call.legs and not call.watchdogs and self._calls.get(call_id) is call:
                    del self._calls[call_id]
                raise
            if call.closed or self._closed:
                await leg.close()
                raise CallClosed(f"call {call_id!r} was closed while its offer was answered")
            previous = call.legs.get(party)
            call.legs[party] = leg
            self._watch(call, party, leg)
            call.wire()
            if call.recorder is not None:
                call.recorder.attach(party, leg.publications)
            elif record:
                self._start_recording(call)
            if previous is not None:
                log.info("media: %s/%s re-offered: replacing its peer connection", call_id, party)
                self._background(previous.close())
        return answer_sdp

    def expect(self, call_id: str, parties: Iterable[str]) -> None:
        """The call started: each of ``parties`` must offer and connect within
        ``connect_timeout_s``, else ``on_media_failed`` is told (a party that never offers
        would leave the other paying for a black screen)."""
        if self._closed:
            return
        call = self._calls.get(call_id)
        if call is None:
            call = self._calls[call_id] = CallMedia(call_id)
        for party in parties:
            if party not in call.legs and party not in call.watchdogs:
                self._watch(call, party, None)

    async def add_candidate(
        self,
        call_id: str,
        party: str,
        candidate: str,
        sdp_mid: str | None,
        sdp_mline_index: int | None,
    ) -> None:
        """Add a trickled ICE candidate from ``party`` (empty ``candidate``: end of them)."""
        call = self._calls.get(call_id)
        leg = call.legs.get(party) if call is not None else None
        if leg is None:
            raise UnknownLeg(call_id, party)
        await leg.add_candidate(candidate, sdp_mid, sdp_mline_index)

    async def close_call(self, call_id: str) -> None:
        """Close both parties' peer connections (within ``CLOSE_TIMEOUT_S``); idempotent."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        call.closed = True
        frames, packets = _forwarded(call.stats())
        self._forwarded_before = (
            self._forwarded_before[0] + frames,
            self._forwarded_before[1] + packets,
        )
        for watchdog in call.watchdogs.values():
            watchdog.cancel()
        legs = list(call.legs.values())
        await self._close_legs(legs)
        if call.recorder is not None:
            await self._finish_recording(call.recorder)

    async def close(self) -> None:
        """Close every call; no new offers are answered afterwards."""
        self._closed = True
        calls = list(self._calls)
        await asyncio.gather(*(self.close_call(c) for c in calls))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def start_recording(self, call_id: str) -> bool:
        """Record ``call_id`` from now on (both parties), e.g. once both consented mid-call.

        False if the call has no media (yet); idempotent. Raises ``NotSupported`` when
        ``media.recording`` is off.
        """
        if self.settings.recording == "off" or self.settings.record_dir is None:
            raise NotSupported("recording is off (media.recording)")
        call = self._calls.get(call_id)
        if call is None or self._closed:
            return False
        async with call.lock:
            if call.closed:
                return False
            if call.recorder is None:
                self._start_recording(call)
        return True

    async def recordings(self) -> list[Recording]:
        """Finished recording files under ``media.record_dir`` (one per party of a call),
        also those of earlier processes (``duration_s`` None) and failed or unfinished ones
        (``complete`` False). Files still being written are left out."""
        record_dir = self.settings.record_dir
        if record_dir is None:
            return []
        return await asyncio.to_thread(
            scan_recordings, record_dir, dict(self._recorded), set(self._recording_dirs)
        )

    def legs(self) -> int:
        """Peer connections open now, over every call."""
        return sum(len(call.legs) for call in self._calls.values())

    def forwarded(self) -> tuple[int, int]:
        """(frames, packets) forwarded since start, over every call (the metrics)."""
        frames, packets = self._forwarded_before
        for call in self._calls.values():
            live = _forwarded(call.stats())
            frames, packets = frames + live[0], packets + live[1]
        return frames, packets

    def stats(self, call_id: str) -> CallStats | None:
        call = self._calls.get(call_id)
        return call.stats() if call is not None else None

    async def _close_legs(self, legs: list[Leg]) -> None:
        tasks = [asyncio.ensure_future(leg.close()) for leg in legs]
        if not tasks:
            return
        done, pending = await wait(self._clock, tasks, CLOSE_TIMEOUT_S)
        for task in pending:
            # Not cancelled: a half-closed peer connection would leak sockets and threads.
            log.warning("media: closing a peer connection takes over %ss", CLOSE_TIMEOUT_S)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("media: closing a peer connection failed: %r", task.exception())

    def _leg_state(self, call: CallMedia, leg: Leg, state: str) -> None:
        if self._on_state is not None:
            self._on_state(call.call_id, leg.party, state)
        if call.legs.get(leg.party) is not leg or call.closed:
            return  # a replaced leg closing, or the call's end
        if state == "connected":
            watchdog = call.watchdogs.pop(leg.party, None)
            if watchdog is not None:
                watchdog.cancel()
        elif state in ("failed", "closed") and leg.party not in call.watchdogs:
            # The party may still re-offer (a network switch); if it does not in time,
            # nobody should pay for a black screen.
            self._watch(call, leg.party, leg)

    def _watch(self, call: CallMedia, party: str, leg: Leg | None) -> None:
        """Give ``party`` ``connect_timeout_s`` to have ``leg`` (None: any offer at all)
        connected, else report its media failed."""
        previous = call.watchdogs.pop(party, None)
        if previous is not None:
            previous.cancel()
        if self.on_media_failed is None:
            return
        task = asyncio.ensure_future(self._watchdog(call, party, leg, self.on_media_failed))
        call.watchdogs[party] = task
        task.add_done_callback(lambda t: _discard(call.watchdogs, party, t))

    async def _watchdog(
        self, call: CallMedia, party: str, leg: Leg | None, report: MediaFailed
    ) -> None:
        await self._clock.sleep(self.settings.connect_timeout_s)
        if call.closed or call.legs.get(party) is not leg:
            return  # replaced: the new leg has its own watchdog
        state = leg.pc.connectionState if leg is not None else "no offer"
        if state == "connected":
            return
        log.warning(
            "media: %s/%s not connected after %ss (%s)",
            call.call_id,
            party,
            self.settings.connect_timeout_s,
            state,
        )
        # Out of the watchdogs first: the report may close the call, which cancels them.
        call.watchdogs.pop(party, None)
        try:
            await report(call.call_id, party)
        except Exception:
            log.exception("media: the media-failed callback raised")

    def _start_recording(self, call: CallMedia) -> None:
        record_dir = self.settings.record_dir
        assert record_dir is not None  # answer checked
        recorder = CallRecorder(
            call.call_id,
            record_dir,
            video_codec=self.settings.video_codec,
            clock=self._clock,
            capacity=self.settings.record_queue_frames,
            start_wait_s=self.settings.record_start_wait_s,
        )
        call.recorder = recorder
        self._recording_dirs.add(recorder.call_directory)
        for party, leg in call.legs.items():
            recorder.attach(party, leg.publications)
        log.info("media: recording call %s in %s", call.call_id, recorder.call_directory)

    async def _finish_recording(self, recorder: CallRecorder) -> None:
        async def finish() -> None:
            try:
                for recording in await recorder.close():
                    self._recorded[recording.path] = recording
            except Exception:
                log.exception("media: recording of call %s failed", recorder.call_id)
            finally:
                self._recording_dirs.discard(recorder.call_directory)

        task = asyncio.ensure_future(finish())
        done, _ = await wait(self._clock, {task}, RECORDING_CLOSE_TIMEOUT_S)
        if not done:
            log.warning(
                "media: closing the recording of call %s takes over %ss",
                recorder.call_id,
                RECORDING_CLOSE_TIMEOUT_S,
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _discard(tasks: dict[str, asyncio.Task[None]], party: str, task: asyncio.Task[None]) -> None:
    if tasks.get(party) is task:
        del tasks[party]


def _forwarded(stats: CallStats) -> tuple[int, int]:
    subscriptions = [s for leg in stats.legs.values() for s in leg.subscribed.values()]
    return (
        sum(s.frames_forwarded for s in subscriptions),
        sum(s.packets_forwarded for s in subscriptions),
    )
