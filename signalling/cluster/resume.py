"""Where a dropped session's frames wait for its client to resume it, on any node (§3).

While a session is connected its node keeps its last frames in memory (session.py). When
the connection drops, the node ``park``s them here and ``append``s every frame that still
comes for the session, until the client resumes (``take``, from whichever node it reaches)
or the window passes. Frames are numbered as the session sent them: frame ``n`` is the n-th
after ``welcome``, which is what the client counts.

``take`` is atomic: after it, ``append`` fails, so a frame is either in what the resuming
node took or refused to the node that held the session (never both, never lost unseen).
Bounded: past ``max_frames`` the parked session is marked overflowed and stops growing;
its resume is then refused (the client resyncs) rather than silently missing messages.

``MemoryResume`` is the embedded adapter, ``resume_redis.RedisResume`` the real one;
tests/contract/test_resume_contract.py runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..clock import Clock


@dataclass(frozen=True, slots=True)
class Parked:
    """What a resume found: frames ``first_seq``.. in order, and whether any are missing."""

    user_id: str
    first_seq: int
    frames: list[bytes]
    overflowed: bool

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.frames) - 1


class ResumeStore(Protocol):
    async def park(self, token: str, user_id: str, first_seq: int, frames: Sequence[bytes]) -> None:
        """The session behind ``token`` dropped; these were its last frames, numbered from
        ``first_seq`` (``first_seq`` = next seq and no frames when none are kept)."""

    async def append(self, token: str, frame: bytes) -> bool:
        """One more frame for the parked session; False once it was taken or expired."""

    async def take(self, token: str, user_id: str) -> Parked | None:
        """Claim the parked session for a resume by ``user_id``: None if there is none
        under that token for that user (forged, expired, taken, someone else's)."""


@dataclass
class _Entry:
    user_id: str
    first_seq: int
    expires: float
    frames: list[bytes] = field(default_factory=list)
    overflowed: bool = False


class MemoryResume:
    """One process: parked sessions in a dict, expired on read."""

    def __init__(self, clock: Clock, *, window_s: float, max_frames: int) -> None:
        self._clock = clock
        self._window = window_s
        self._max = max_frames
        self._parked: dict[str, _Entry] = {}
        self._purged_at = float("-inf")

    def _live(self, token: str) -> _Entry | None:
        entry = self._parked.get(token)
        if entry is not None and entry.expires <= self._clock.monotonic():
            del self._parked[token]
            return None
        return entry

    async def park(self, token: str, user_id: str, first_seq: int, frames: Sequence[bytes]) -> None:
        now = self._clock.monotonic()
        if now - self._purged_at >= 1.0:  # at most once a second: a drop storm stays linear
            self._purged_at = now
            for expired in [t for t, e in self._parked.items() if e.expires <= now]:
                del self._parked[expired]
        entry = _Entry(user_id, first_seq, now + self._window)
        self._parked[token] = entry
        for frame in frames:
            self._push(entry, frame)

    def _push(self, entry: _Entry, frame: bytes) -> None:
        if len(entry.frames) >= self._max:
            entry.overflowed = True
        elif not entry.overflowed:
            entry.frames.append(frame)

    async def append(self, token: str, frame: bytes) -> bool:
        entry = self._live(token)
        if entry is None:
            return False
        self._push(entry, frame)
        return True

    async def take(self, token: str, user_id: str) -> Parked | None:
        entry = self._live(token)
        if entry is None or entry.user_id != user_id:
            return None
        del self._parked[token]
        return Parked(user_id, entry.first_seq, entry.frames, entry.overflowed)


def missed_frames(parked: Parked | None, last_seq: int) -> list[bytes] | None:
    """The frames after ``last_seq``, if the parked session has every one of them."""
    if parked is None or parked.overflowed:
        return None
    if not parked.first_seq - 1 <= last_seq <= parked.last_seq:
        return None  # some were dropped from the bounded buffer, or the count is wrong
    return parked.frames[last_seq - parked.first_seq + 1 :]
