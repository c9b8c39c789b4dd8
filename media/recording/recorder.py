"""Call recording, the part the SFU drives: taps each party's publications, muxes on a
thread (DESIGN §6: the same encoded packets into a container, never re-encoded).

Where the frames come from
    ``Publication.add_tap`` (media/forwarding.py): every frame the receiver hook hands the
    forwarding code is also handed to ``CallRecorder``'s sink, on the event loop. The sink
    only timestamps the frame (arrival on the injected clock's monotonic time, the call's
    shared timeline: media/recording/timeline.py) and puts it on a queue bounded by
    ``media.record_queue_frames``; it never blocks. A full queue drops the frame (video
    then waits for, and asks the publisher for, a keyframe). Nothing is decoded.

Where they go
    One thread per recorded call runs a ``RecordingWriter`` (media/recording/writer.py),
    which does all PyAV and file work. The thread waits on its queue, with a timeout up to
    the writer's next deadline (computed on the injected clock), rather than on the clock
    itself: tests drive the writer's ``tick`` directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from media.clock import Clock
from media.forwarding import Publication
from media.recording.files import Recording, safe_name
from media.recording.writer import KINDS, Expect, QueuedFrame, RecordingWriter, Start
from media.rtp_hooks import EncodedFrame
from media.settings import VideoCodec

log = logging.getLogger(__name__)

Slot = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RecordingStats:
    directory: Path
    frames_queued: int
    frames_dropped: int
    """Frames not recorded: the queue was full, or video waited for a keyframe."""
    frames_written: int
    failed: tuple[str, ...]
    """Parties whose file failed."""


_STOP: Final = object()


class CallRecorder:
    """Records one call: taps each party's publications, muxes on its own thread."""

    def __init__(
        self,
        call_id: str,
        directory: Path,
        *,
        video_codec: VideoCodec,
        clock: Clock,
        capacity: int,
        start_wait_s: float,
    ) -> None:
        self.call_id = call_id
        self.directory = directory
        self.call_directory = directory / safe_name(call_id)
        self._clock = clock
        self._capacity = capacity
        self._queue: queue.Queue[object] = queue.Queue()
        self._writer = RecordingWriter(
            call_id, directory, video_codec=video_codec, start_wait_s=start_wait_s
        )
        self._sources: dict[tuple[str, str], int] = {}
        self._waiting_keyframe: dict[tuple[str, str], bool] = {}
        self._taps: list[tuple[Publication, Any]] = []
        self._t0: float | None = None
        self._closed = False
        self._queued = 0
        self._dropped = 0
        self._done: concurrent.futures.Future[list[Recording]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{safe_name(call_id)}", daemon=True
        )
        self._thread.start()

    def attach(self, party: str, publications: Mapping[Slot, Publication]) -> None:
        """Record what ``party`` publishes (its first audio and video m-line), from now on.

        Called again for a party that reconnected: its new leg's frames replace the old
        leg's (the mapper re-anchors, video restarts at a keyframe).
        """
        if self._closed:
            return
        chosen = {kind: pub for (kind, ordinal), pub in publications.items() if ordinal == 0}
        kinds = tuple(k for k in KINDS if k in chosen)
        self._queue.put(Expect(party, kinds))
        for kind in kinds:
            publication = chosen[kind]
            key = (party, kind)
            source = self._sources[key] = self._sources.get(key, 0) + 1

            def sink(
                frame: EncodedFrame,
                key: tuple[str, str] = key,
                source: int = source,
                publication: Publication = publication,
            ) -> None:
                self._on_frame(key, source, publication, frame)

            publication.add_tap(sink)
            self._taps.append((publication, sink))
            self._waiting_keyframe[key] = kind == "video"
            if kind == "video":
                publication.request_keyframe()
        extra = sorted({f"{k}#{o}" for (k, o) in publications if o != 0})
        if extra:
            log.info("media: recording %s/%s: not recording %s", self.call_id, party, extra)

    def stats(self) -> RecordingStats:
        return RecordingStats(
            directory=self.call_directory,
            frames_queued=self._queued,
            frames_dropped=self._dropped,
            frames_written=self._writer.frames_written,
            failed=self._writer.failed,
        )

    async def close(self) -> list[Recording]:
        """Stop taking frames, mux what is queued, close the files (idempotent)."""
        if not self._closed:
            self._closed = True
            for publication, sink in self._taps:
                publication.remove_tap(sink)
            self._taps.clear()
            self._queue.put(_STOP)
        return await asyncio.shield(asyncio.wrap_future(self._done))

    def _on_frame(
        self, key: tuple[str, str], source: int, publication: Publication, frame: EncodedFrame
    ) -> None:
        # On the event loop, for every frame: cheap, never blocks.
        if self._closed or self._sources.get(key) != source:
            return  # closing, or a replaced leg's publication
        party, kind = key
        if self._waiting_keyframe.get(key):
            if not frame.keyframe:
                self._dropped += 1  # the publication keeps asking for one until it comes
                return
            self._waiting_keyframe[key] = False
        if self._queue.qsize() >= self._capacity:
            self._dropped += 1
            if kind == "video":
                self._waiting_keyframe[key] = True
                publication.request_keyframe()
            return
        now = self._clock.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._queue.put(Start(self._clock.time()))
        self._queue.put(QueuedFrame(party, kind, source, now - self._t0, frame))
        self._queued += 1

    def _now(self) -> float:
        return self._clock.monotonic() - self._t0 if self._t0 is not None else 0.0

    def _run(self) -> None:
        # The recorder's thread: all PyAV and file work happens here.
        self._done.set_running_or_notify_cancel()
        writer = self._writer
        try:
            while True:
                deadline = writer.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._now())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    writer.tick(self._now())
                    continue
                if item is _STOP:
                    break
                if isinstance(item, QueuedFrame | Expect | Start):
                    writer.handle(item, self._now())
            self._done.set_result(writer.finish())
        except BaseException as exc:  # a bug: mark what was written, never leave it silent
            log.exception("media: recorder of call %s crashed", self.call_id)
            with contextlib.suppress(BaseException):
                writer.abort(exc)
            self._done.set_exception(exc)
