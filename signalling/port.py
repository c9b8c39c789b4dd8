"""The small port every wing (calls, presence, chat, match, admin) knows the hub by.

A wing registers handlers for its client messages and callbacks for the session
lifecycle, and delivers server messages to a user here or on whichever node holds them.
It never imports ``hub.py`` (import-linter keeps it so) and never another wing: what it
needs of another wing it is given as a callable by ``app.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from .auth import Identity
from .cluster.bus import NodeMessage
from .protocol import Ack, ClientMessage, ServerMessage, Welcome
from .session import Session


class Effect(Protocol):
    """Something a handler asks to happen after its reply has been queued."""

    async def run(self) -> None: ...


class Answered(enum.Enum):
    """The handler has answered the request itself (e.g. the call's node on another node
    did, through the bus): the hub sends no ack."""

    ANSWERED = "answered"


ANSWERED = Answered.ANSWERED

# A handler returns its reply (None: a plain ack) and the effects to run after the reply,
# so the requester hears its ack (with the call id) before the events it causes.
Outcome = tuple[Ack | Answered | None, list[Effect]]
Handler = Callable[[Session, Any], Awaitable[Outcome]]
DONE: Outcome = (None, [])

M = TypeVar("M", bound=NodeMessage)


class Departure(enum.Enum):
    """Why a session stopped being the user's session on this node."""

    REPLACED_HERE = "replaced_here"  # a newer session of the user on this node took over
    MOVED = "moved"  # the user connected on another node, which now owns their presence
    GONE = "gone"  # the connection ended: the user is offline unless they are elsewhere
    # The connection dropped and the session is parked for a resume (§3.1): the user is
    # offline for others, yet frames for them still reach it (and its watches stay).
    DETACHED = "detached"
    REFUSED = "refused"  # the session could not join (a store failure): closed 1013


class Located(Protocol):
    """Where a user is connected (a presence record, as far as routing cares)."""

    @property
    def user_id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def name(self) -> str: ...


class Directory(Protocol):
    """Where users are connected: the presence store, as far as the hub's routing needs it."""

    node_id: str

    async def get_many(self, user_ids: Iterable[str]) -> Mapping[str, Located]: ...

    async def claim(self, user_id: str, session_id: str, role: str, name: str) -> Located | None:
        """Make this node and session the user's, whoever held them (the newest connect
        wins); returns the live record it took over, so its session can be closed."""


class HubPort(Protocol):
    @property
    def node_id(self) -> str: ...

    def register(self, kind: type[ClientMessage], handler: Handler) -> None:
        """Handle this client message type (one handler per type)."""

    def on_welcome(self, part: Callable[[Session, Welcome], Awaitable[Welcome]]) -> None:
        """Add to a session's ``welcome`` before it is sent (e.g. the call it is in)."""

    def on_join(self, callback: Callable[[Session], Awaitable[None]]) -> None:
        """Run after ``welcome``; a failure refuses the session (closed 1013)."""

    def on_connect(self, callback: Callable[[Session], Awaitable[None]]) -> None:
        """Run after the session is up; a failure is logged and the session stays."""

    def on_leave(self, callback: Callable[[Session, Departure], Awaitable[None]]) -> None:
        """Run when a session stops being its user's session here (see Departure)."""

    def on_node_message(
        self, kind: type[M], handler: Callable[[M], Awaitable[None] | None]
    ) -> None:
        """Handle this node bus message type from other nodes: in arrival order with the
        other messages about the same user (``user_id``) or call, concurrently with the
        rest. A handler that needs no I/O should be a plain function (it costs no task)."""

    def session_of(self, user_id: str) -> Session | None:
        """The user's session on this node."""

    def parked(self, user_id: str) -> Session | None:
        """The user's dropped session kept here for a resume (§3.1), if any."""

    def local_users(self) -> Iterable[str]: ...

    def deliver(self, user_id: str, message: ServerMessage) -> bool:
        """Send to the user's session on this node; False if they have none here."""

    async def deliver_anywhere(self, user_id: str, *messages: ServerMessage) -> bool:
        """Send to the user wherever they are connected, in order; False if offline."""

    async def locate(self, user_ids: Iterable[str]) -> Mapping[str, Located]:
        """Where these users are connected (offline users are absent)."""

    async def find_user(self, user_id: str) -> Identity | None:
        """Who an online user is (this node's session, or wherever they are)."""

    async def to_node(self, node_id: str, message: NodeMessage) -> None: ...

    async def broadcast(self, message: NodeMessage) -> None:
        """To every other node."""
