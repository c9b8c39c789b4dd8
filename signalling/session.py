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
from .protocol import CloseCode, ServerMessage, encode
from .ratelimit import TokenBucket


class Session:
    def __init__(
        self,
        identity: Identity,
        *,
        clock: Clock,
        send_queue_max: int,
        rate_per_s: float,
        rate_burst: int,
    ) -> None:
        self.session_id = "s_" + secrets.token_urlsafe(12)
        self.identity = identity
        self.status = "available"  # what the user chose; shown as busy while in a call
        self.location: tuple[float, float] | None = None
        self.watching: set[str] = set()
        self.rate = TokenBucket(rate_per_s, rate_burst, clock)
        self.rate_strikes = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self._queue: deque[bytes] = deque()
        self._max = send_queue_max
        self._wakeup = asyncio.Event()
        # Set by the I/O side: called when the session must stop sending at once (4008).
        self.on_abort: Callable[[], None] | None = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def send(self, message: ServerMessage) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        if self.closing:
            return
        if len(self._queue) >= self._max:
            # A consumer this far behind would grow memory without bound: drop it (§7).
            self._queue.clear()
            self.close(CloseCode.POLICY, "slow consumer")
            if self.on_abort is not None:
                self.on_abort()
            return
        self._queue.append(frame)
        self._wakeup.set()

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the I/O side to close; frames already queued are still sent first."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._wakeup.set()

    def take(self) -> list[bytes]:
        frames = list(self._queue)
        self._queue.clear()
        self._wakeup.clear()
        return frames

    async def wait(self) -> None:
        await self._wakeup.wait()
