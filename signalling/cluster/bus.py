"""Messages between hub nodes (DESIGN §3): a frame for a user connected elsewhere, a session
to close (one live session per user across nodes), a call to end, a presence change.

``LocalRouter`` is the single-process default (there is nobody else); ``RedisRouter`` uses
Redis pub/sub: one channel per node for addressed messages, one shared channel for presence.
Pub/sub is at-most-once: a node that is down misses what was sent to it, which is right for
live frames (chat messages are stored and pushed again on the next connect).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)


class NodeMessage(msgspec.Struct, frozen=True, tag_field="kind", kw_only=True):
    """Base of every message between nodes; ``origin`` is the sending node."""

    origin: str = ""


class UserFrame(NodeMessage, frozen=True, tag="frame"):
    """An encoded server frame for a user connected to the receiving node."""

    user_id: str
    frame: bytes


class CloseSession(NodeMessage, frozen=True, tag="close"):
    """The user connected elsewhere: close this older session of theirs (one per user)."""

    user_id: str
    session_id: str


class Evict(NodeMessage, frozen=True, tag="evict"):
    """Close the user's session (live or parked) on the receiving node: they were banned."""

    user_id: str
    reason: str


class EndCall(NodeMessage, frozen=True, tag="end_call"):
    """End a call that runs on the receiving node (billing found it out of money, ...)."""

    call_id: str
    reason: str


class PresenceNote(NodeMessage, frozen=True, tag="presence"):
    """A user's shown status changed (broadcast, for watchers on every node)."""

    user_id: str
    status: str


class CallForward(NodeMessage, frozen=True, tag="call_forward"):
    """A party's client message (JSON) for the call the receiving node owns; answered by
    ``CallForwardDone`` to ``node`` under ``request``."""

    request: str
    node: str
    user_id: str
    session_id: str
    frame: bytes


class CallForwardDone(NodeMessage, frozen=True, tag="call_forward_done"):
    """The owner's answer to a ``CallForward``: done (``code`` empty) or refused."""

    request: str
    user_id: str = ""  # the asking party (its node keeps their messages in order)
    code: str = ""
    message: str = ""


class PartyInCall(NodeMessage, frozen=True, tag="party_in_call"):
    """To a party's node from the call's owner: your user is in (or out of) my call."""

    user_id: str
    call_id: str
    in_call: bool
    entry: bytes = b""  # the call's directory entry (msgpack) when in_call


class PartyMoved(NodeMessage, frozen=True, tag="party_moved"):
    """To the call's owner: the party now has this session on this node (``node`` empty:
    the session ended, and the call waits out the grace period unless a newer one came)."""

    user_id: str
    call_id: str
    session_id: str
    node: str = ""


class MatchMade(NodeMessage, frozen=True, tag="match_made"):
    """To the caller's node: its waiting caller was paired with a host who came (the
    pairing, msgpack); it rings the host as for a pairing it made itself."""

    pair: bytes
    user_id: str = ""  # the caller


AnyNodeMessage = (
    UserFrame
    | CloseSession
    | Evict
    | EndCall
    | PresenceNote
    | CallForward
    | CallForwardDone
    | PartyInCall
    | PartyMoved
    | MatchMade
)


Inbox = Callable[[NodeMessage], Awaitable[None]]


class Router(Protocol):
    async def start(self, inbox: Inbox) -> None: ...

    async def to_node(self, node_id: str, message: NodeMessage) -> None: ...

    async def broadcast(self, message: NodeMessage) -> None:
        """To every other node (they skip their own messages by ``origin``)."""

    async def close(self) -> None: ...


class LocalRouter:
    """One process: every user is local, so there is never anyone to route to."""

    async def start(self, inbox: Inbox) -> None:
        return None

    async def to_node(self, node_id: str, message: NodeMessage) -> None:
        return None

    async def broadcast(self, message: NodeMessage) -> None:
        return None

    async def close(self) -> None:
        return None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyNodeMessage)


OUTBOX_MAX = 100_000  # messages waiting for Redis; past it the oldest are dropped
BATCH_MAX = 512
CLOSE_WAIT_S = 2.0


class RedisRouter:
    """Pub/sub on the caller's Redis client (which the caller closes).

    Sending never waits for Redis: messages go, in the order they were sent, into an outbox
    that one task publishes in pipelined batches (one round trip for many messages, so a
    relay across nodes is not one Redis round trip per frame). Pub/sub is at-most-once
    anyway; a message that cannot be published is logged and dropped."""

    def __init__(self, redis: Redis, node_id: str, *, prefix: str) -> None:
        self._redis = redis
        self._node_id = node_id
        self._own = f"{prefix}:bus:node:{node_id}"
        self._shared = f"{prefix}:bus:all"
        self._prefix = prefix
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0

    async def start(self, inbox: Inbox) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._own, self._shared)
        self._task = asyncio.create_task(self._listen(self._pubsub, inbox))

    async def _listen(self, pubsub: PubSub, inbox: Inbox) -> None:
        while True:
            try:
                raw = await pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # redis-py reconnects and resubscribes on the next call; don't spin.
                log.exception("node bus read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if raw is None or raw.get("type") != "message":
                continue
            try:
                message = _decoder.decode(raw["data"])
            except msgspec.DecodeError:
                log.warning("dropped a malformed node bus message")
                continue
            if message.origin == self._node_id:
                continue  # our own broadcast
            try:
                await inbox(message)
            except Exception:
                log.exception("node bus message %s failed", type(message).__name__)

    async def to_node(self, node_id: str, message: NodeMessage) -> None:
        self._post(f"{self._prefix}:bus:node:{node_id}", message)

    async def broadcast(self, message: NodeMessage) -> None:
        self._post(self._shared, message)

    def _post(self, channel: str, message: NodeMessage) -> None:
        stamped = msgspec.structs.replace(message, origin=self._node_id)
        if len(self._outbox) >= OUTBOX_MAX:
            self._outbox.popleft()
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.error("node bus: Redis is not keeping up; %d messages dropped", self.dropped)
        self._outbox.append((channel, _encoder.encode(stamped)))
        self._wake.set()
        if self._flusher is None and not self._closing:
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        # Cancellation is also checked by hand: a library under this loop that swallows a
        # CancelledError (the test suite caught one doing so, 1 run in ~20) must not leave
        # it waiting for a wake-up forever, and close() with it.
        me = asyncio.current_task()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), BATCH_MAX))]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for channel, data in batch:
                            pipe.publish(channel, data)
                        await pipe.execute()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.dropped += len(batch)
                    log.exception("node bus: publishing %d messages failed", len(batch))
                    await asyncio.sleep(0.2)

    async def close(self) -> None:
        # What is already posted still goes out (a shutdown's call.ended), briefly.
        self._closing = True
        self._wake.set()
        for _ in range(20):
            if not self._outbox:
                break
            await asyncio.sleep(0.05)
        for task in (self._flusher, self._task):
            if task is not None and not task.done():
                task.cancel()
                # Bounded: a task that swallowed its cancellation must not hold the shutdown.
                if not (await asyncio.wait({task}, timeout=CLOSE_WAIT_S))[0]:
                    log.error(
                        "node bus: %s did not stop within %s s", task.get_name(), CLOSE_WAIT_S
                    )
        if self._pubsub is not None:
            # redis-py types aclose from 8.2 on; through a typed name, either version checks.
            aclose: Callable[[], Awaitable[None]] = self._pubsub.aclose
            await aclose()
