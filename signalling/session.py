"""One client connection as the hub sees it: identity, an outgoing queue, limits.

No socket here: the aiohttp handler (ws.py) pumps ``take()`` into the socket, so tests can
drive a Session with plain calls and read what it would have sent.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable

from .auth import Identity
from .clock import Clock
from .protocol import CloseCode, ServerMessage, Status, encode
from .ratelimit import TokenBucket
from .settings import HubSettings

# One empty set for every session that watches nobody: frozenset() is a new 216-byte object
# each time (Python 3.11), and most sessions watch nobody (idle memory).
NOBODY: frozenset[str] = frozenset()


class Session:
    # Slots, and the queue and the writer's waiter made only when first needed: an idle
    # session is one of thousands per node (docs/benchmarks.md, idle memory).
    __slots__ = (
        "__weakref__",  # (chat keeps typing throttles per session in a WeakKeyDictionary)
        "_counting",
        "_max",
        "_max_bytes",
        "_queue",
        "_queued_bytes",
        "_recent",
        "_recent_bytes",
        "_recent_max",
        "_recent_max_bytes",
        "_sink",
        "aborted",
        "close_code",
        "close_reason",
        "identity",
        "joining",
        "location",
        "on_abort",
        "on_ready",
        "rate",
        "rate_strikes",
        "resume_token",
        "resumed",
        "seq",
        "session_id",
        "status",
        "transport",
        "watching",
        "write_now",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        clock: Clock,
        send_queue_max: int,
        send_queue_max_bytes: int,
        rate_per_s: float,
        rate_burst: int,
        resume_frames: int = 0,
        resume_bytes: int = 0,
    ) -> None:
        self.session_id = "s_" + secrets.token_urlsafe(12)
        # §3.1: frames after welcome are numbered 1, 2, ... (what the client counts); the
        # last ones are kept (bounded) so a resume can give back what the client missed.
        self.resume_token = secrets.token_urlsafe(18) if resume_frames > 0 else None
        self.resumed = False
        self.joining = False  # hub.connect has not finished with it yet
        self.seq = 0
        self._counting = False
        self._recent: deque[bytes] | None = None  # created at the first frame: idle is cheap
        self._recent_bytes = 0
        self._recent_max = resume_frames
        self._recent_max_bytes = resume_bytes
        # Detached (the connection dropped, resumable): frames go here instead.
        self._sink: Callable[[bytes], None] | None = None
        self.identity = identity
        self.status: Status = "available"  # what the user chose; busy while in a call
        self.location: tuple[float, float] | None = None
        self.watching: frozenset[str] = NOBODY
        self.rate = TokenBucket(rate_per_s, rate_burst, clock)
        self.rate_strikes = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self._max = send_queue_max
        self._max_bytes = send_queue_max_bytes
        # Set by the I/O side: called when there is a frame to write or a close to send (it
        # starts its writer, which ends once all is sent: an idle session has none).
        self.on_ready: Callable[[], None] | None = None
        # True once the session was dropped for not reading: the I/O side then drops the
        # connection without a closing handshake the client would never read.
        self.aborted = False
        # Set by the I/O side: called when the session must stop sending at once.
        self.on_abort: Callable[[], None] | None = None
        # Set by the I/O side: the connection's transport, closed by the event loop the
        # moment the client goes, while the session may still be handling its last frame.
        self.transport: asyncio.BaseTransport | None = None
        # Set by the I/O side: write a frame to the socket at once if nothing must go
        # before it (False: it goes through the queue and the writer task as ever).
        self.write_now: Callable[[bytes], bool] | None = None

    @classmethod
    def of_hub(
        cls, identity: Identity, clock: Clock, hub: HubSettings, *, resumable: bool
    ) -> Session:
        """A session with the hub's limits; ``resumable``: it keeps frames for a resume."""
        return cls(
            identity,
            clock=clock,
            send_queue_max=hub.send_queue_max,
            send_queue_max_bytes=hub.send_queue_max_bytes,
            rate_per_s=hub.rate_per_s,
            rate_burst=hub.rate_burst,
            resume_frames=hub.resume_buffer_frames if resumable else 0,
            resume_bytes=hub.resume_buffer_bytes,
        )

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def reachable(self) -> bool:
        """False once the connection is known to be gone (or closing): the hub may not
        have seen it yet, e.g. while it handles the session's last frame."""
        t = self.transport
        return self.close_code is None and (t is None or not t.is_closing())

    def send(self, message: ServerMessage) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        if self._sink is not None:
            self.seq += 1
            self._sink(frame)
            return
        if self.closing:
            return
        # Nothing queued (so nothing in the writer's hands): straight to the socket, without
        # waking the writer task, a task step per frame (docs/benchmarks.md).
        written = self._queue is None and self.write_now is not None and self.write_now(frame)
        if not written and not self._enqueue(frame):
            return
        if self._counting:
            self.seq += 1
            if self._recent_max:
                self._keep(frame)

    def _enqueue(self, frame: bytes) -> bool:
        # Bounded in frames and in bytes; one frame of any size fits an empty queue, so a
        # large reply still reaches a client that keeps up (§6).
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        elif queue and (
            len(queue) >= self._max or self._queued_bytes + len(frame) > self._max_bytes
        ):
            self.abort("slow consumer")
            return False
        queue.append(frame)
        self._queued_bytes += len(frame)
        self._wake()
        return True

    def count_from_here(self) -> None:
        """The welcome has been queued: number the frames that follow."""
        self._counting = True

    def _keep(self, frame: bytes) -> None:
        recent = self._recent  # (once per relayed frame: locals, not attributes)
        if recent is None:
            recent = self._recent = deque()
        recent.append(frame)
        size = self._recent_bytes + len(frame)
        while len(recent) > self._recent_max or (size > self._recent_max_bytes and len(recent) > 1):
            size -= len(recent.popleft())
        self._recent_bytes = size

    def detach(self, sink: Callable[[bytes], None]) -> tuple[int, list[bytes]]:
        """The connection dropped: later frames go to ``sink`` (numbered on). Returns the
        kept frames and the seq of the first of them."""
        kept = list(self._recent or ())
        self._recent = None
        self._recent_bytes = 0
        self._queue = None
        self._queued_bytes = 0
        self._sink = sink
        return self.seq - len(kept) + 1, kept

    @property
    def detached(self) -> bool:
        return self._sink is not None

    def abort(self, reason: str) -> None:
        """Drop a consumer that is not reading: what is queued is freed, the connection is
        cut (4008 in the log; the client, not reading, sees the connection drop)."""
        self._queue = None
        self._queued_bytes = 0
        self.aborted = True
        self.close(CloseCode.POLICY, reason)
        if self.on_abort is not None:
            self.on_abort()

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the I/O side to close; frames already queued are still sent first."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._wake()

    def _wake(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def take(self) -> list[bytes]:
        frames = list(self._queue or ())
        self._queue = None
        self._queued_bytes = 0
        return frames

    def pop(self) -> bytes | None:
        """The next frame to write, or None when all are sent. A frame leaves the byte
        count when the writer takes it: at most one is in flight."""
        if not self._queue:
            self._queue = None  # drained: an idle session holds no deque
            return None
        frame = self._queue.popleft()
        self._queued_bytes -= len(frame)
        return frame

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes
