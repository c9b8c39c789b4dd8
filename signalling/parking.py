"""Sessions whose connection dropped, kept resumable for ``hub.resume_window_s`` (§3.1).

A parked session stays the target of everything addressed to its user on this node (calls,
chat, ticks, the presence changes it watched); its frames go, in order, to the resume store
(cluster/resume.py), where a resume on any node takes them. It ends when it is taken (the
store refuses the next frame), resumed here, or when the window passes: then ``on_end``
runs, which is the departure the wings would have seen without resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .clock import Clock
from .cluster.resume import ResumeStore
from .session import Session

log = logging.getLogger(__name__)


class Parking:
    def __init__(
        self,
        store: ResumeStore,
        clock: Clock,
        *,
        window_s: float,
        on_end: Callable[[Session], Awaitable[None]],
    ) -> None:
        self._store = store
        self._clock = clock
        self._window = window_s
        self._on_end = on_end
        self.sessions: dict[str, Session] = {}  # user id -> their parked session
        self._writers: dict[str, asyncio.Task[None]] = {}

    def get(self, user_id: str) -> Session | None:
        return self.sessions.get(user_id)

    async def park(self, session: Session) -> bool:
        """Park ``session`` (its connection dropped); raises if the store is away. False if
        a newer session of the user took over while the store was written (then it is not
        parked, and its departure has been seen already)."""
        frames: asyncio.Queue[bytes] = asyncio.Queue()
        first_seq, kept = session.detach(frames.put_nowait)
        assert session.resume_token is not None
        # Frames for the user from now on reach it (queued until the store has the rest).
        self.sessions[session.user_id] = session
        try:
            await self._store.park(session.resume_token, session.user_id, first_seq, kept)
        except BaseException:
            if self.sessions.get(session.user_id) is session:
                del self.sessions[session.user_id]
            raise
        if self.sessions.get(session.user_id) is not session:
            return False
        writer = asyncio.create_task(self._write(session, frames))
        self._writers[session.session_id] = writer
        return True

    async def _write(self, session: Session, frames: asyncio.Queue[bytes]) -> None:
        token = session.resume_token
        assert token is not None
        deadline = self._clock.monotonic() + self._window
        try:
            while True:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        frame = await frames.get()
                except TimeoutError:
                    break
                try:
                    if not await self._store.append(token, frame):
                        break  # taken by a resume (on another node) or expired
                except Exception:
                    log.exception("parking a frame for %s failed", session.user_id)
        finally:
            self._writers.pop(session.session_id, None)
        await self.unpark(session)

    async def unpark(self, session: Session) -> bool:
        """End the parking of ``session`` (if it is still parked): the wings see it leave.
        True if it was parked."""
        if self.sessions.get(session.user_id) is not session:
            return False
        del self.sessions[session.user_id]
        writer = self._writers.pop(session.session_id, None)
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self._on_end(session)
        return True

    def drop(self, session: Session) -> bool:
        """Forget ``session`` without a departure (it was resumed here, or moved); True if
        it was parked."""
        if self.sessions.get(session.user_id) is not session:
            return False
        del self.sessions[session.user_id]
        writer = self._writers.pop(session.session_id, None)
        if writer is not None:
            writer.cancel()
        return True

    async def close(self) -> None:
        for writer in list(self._writers.values()):
            writer.cancel()
        for writer in list(self._writers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await writer
