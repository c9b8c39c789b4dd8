"""The signalling hub: sessions, frame dispatch, routing to users on other nodes, and the
inbox from them. Everything a feature does lives in a wing (calls/, presence/, chat/, ...)
that knows the hub only through ``port.HubPort``. Nothing here touches a socket (ws.py
does), so tests drive the hub with plain calls. § refers to docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from .auth import Identity, Role, user_info
from .clock import Clock
from .cluster.bus import CloseSession, Evict, LocalRouter, NodeMessage, Router, UserFrame
from .cluster.lanes import Lanes
from .cluster.resume import ResumeStore, missed_frames
from .errors import JalwaError
from .parking import Parking
from .port import ANSWERED, Departure, Directory, Handler, Located
from .protocol import (
    Ack,
    ClientMessage,
    CloseCode,
    DecodeFailure,
    Error,
    ErrorCode,
    IceServerInfo,
    ServerMessage,
    Welcome,
    decode,
    encode,
    peek_id,
    utf8_over,
)
from .session import Session
from .settings import HubSettings

SessionCallback = Callable[[Session], Awaitable[None]]
LeaveCallback = Callable[[Session, Departure], Awaitable[None]]
WelcomePart = Callable[[Session, Welcome], Awaitable[Welcome]]
NodeHandler = Callable[[Any], Awaitable[None] | None]


class Hub:
    def __init__(
        self,
        *,
        settings: HubSettings,
        directory: Directory,
        clock: Clock,
        router: Router | None = None,
        resume: ResumeStore | None = None,
        ice_servers: Callable[[str], list[IceServerInfo]] = lambda user_id: [],
        logger: logging.Logger | None = None,
    ) -> None:
        self._settings = settings
        self._directory = directory
        self._clock = clock
        self._router: Router = router or LocalRouter()
        self._ice_servers = ice_servers
        self._log = logger or logging.getLogger(__name__)
        self.sessions: dict[str, Session] = {}
        # §3.1: dropped sessions kept resumable (none without a store or a window).
        self._resume = resume if settings.resume_window_s > 0 else None
        self.parking: Parking | None = None
        if self._resume is not None:
            self.parking = Parking(
                self._resume,
                clock,
                window_s=settings.resume_window_s,
                on_end=lambda session: self._leave(session, Departure.GONE),
            )
        self._handlers: dict[type[ClientMessage], tuple[Handler, str, bool]] = {}
        self._welcome_parts: list[WelcomePart] = []
        self._on_join: list[SessionCallback] = []
        self._on_connect: list[SessionCallback] = []
        self._on_leave: list[LeaveCallback] = []
        self._lanes = Lanes()
        self._node_handlers: dict[type[NodeMessage], NodeHandler] = {
            UserFrame: self._frame_from_other_node,
            CloseSession: self._close_from_other_node,
            Evict: self._evict_here,
        }
        # (message type, "ok" or error code): read by the metrics on scrape.
        self.frames: Counter[tuple[str, str]] = Counter()
        self.on_relayed: Callable[[float], None] | None = None  # s per rtc.* frame here
        self.draining = False  # SIGTERM: no new sessions (§7, 1012)

    # --- the port (port.HubPort) --------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._directory.node_id

    def register(self, kind: type[ClientMessage], handler: Handler) -> None:
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} already has a handler")
        tag = str(kind.__struct_config__.tag)  # the metrics' label; rtc.* frames are timed
        self._handlers[kind] = (handler, tag, tag.startswith("rtc."))

    def on_welcome(self, part: WelcomePart) -> None:
        self._welcome_parts.append(part)

    def on_join(self, callback: SessionCallback) -> None:
        self._on_join.append(callback)

    def on_connect(self, callback: SessionCallback) -> None:
        self._on_connect.append(callback)

    def on_leave(self, callback: LeaveCallback) -> None:
        self._on_leave.append(callback)

    def on_node_message(self, kind: type[Any], handler: NodeHandler) -> None:
        if kind in self._node_handlers:
            raise ValueError(f"{kind.__name__} already has a handler")
        self._node_handlers[kind] = handler

    def session_of(self, user_id: str) -> Session | None:
        session = self.sessions.get(user_id)  # (one closed while it joined is on its way out)
        return None if session is None or session.closing else session

    def local_users(self) -> Iterable[str]:
        parked = self.parking.sessions if self.parking is not None else {}
        return [*self.sessions, *parked]

    def parked(self, user_id: str) -> Session | None:
        return self.parking.get(user_id) if self.parking is not None else None

    def _target(self, user_id: str) -> Session | None:
        """The session frames for the user go to: connected, or parked for a resume."""
        return self.session_of(user_id) or self.parked(user_id)

    def deliver(self, user_id: str, message: ServerMessage) -> bool:
        if (session := self._target(user_id)) is not None:
            session.send(message)
        return session is not None

    async def deliver_anywhere(self, user_id: str, *messages: ServerMessage) -> bool:
        """Several messages for one user cost one look-up of where they are."""
        session = self._target(user_id)
        if session is not None:
            for message in messages:
                session.send(message)
            return True
        record = (await self._directory.get_many([user_id])).get(user_id)
        if record is None or record.node_id == self.node_id:
            return False
        for message in messages:
            await self._router.to_node(
                record.node_id, UserFrame(user_id=user_id, frame=encode(message))
            )
        return True

    async def locate(self, user_ids: Iterable[str]) -> Mapping[str, Located]:
        return await self._directory.get_many(user_ids)

    async def find_user(self, user_id: str) -> Identity | None:
        if (session := self.sessions.get(user_id)) is not None:
            return session.identity
        record = (await self._directory.get_many([user_id])).get(user_id)
        return None if record is None else Identity(record.user_id, Role(record.role), record.name)

    async def to_node(self, node_id: str, message: NodeMessage) -> None:
        await self._router.to_node(node_id, message)

    async def broadcast(self, message: NodeMessage) -> None:
        await self._router.broadcast(message)

    # --- connection lifecycle (§1, §3) --------------------------------------------------

    async def connect(
        self, identity: Identity, *, resume: tuple[str, int] | None = None
    ) -> Session:
        """A new session; ``resume``: (resume token, last seq the client got), §3.1."""
        uid, resumable = identity.user_id, self._resume is not None
        session = Session.of_hub(identity, self._clock, self._settings, resumable=resumable)
        session.joining = True
        replay: list[bytes] | None = None
        if resume is not None and self._resume is not None:
            replay = missed_frames(await self._resume.take(resume[0], uid), resume[1])
            session.resumed = replay is not None
        parked = self.parked(uid)
        if parked is not None and self.parking is not None:
            self.parking.drop(parked)  # this session takes over (resumed or not)
            await self._leave(parked, Departure.REPLACED_HERE)
        old = self.sessions.get(uid)
        self.sessions[uid] = session  # before the claim: a newer one's close must find it
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer session")
            await self._leave(old, Departure.REPLACED_HERE)
        try:
            await self._join(session, replay, resume is not None)
        except Exception:
            # The store is away: do not keep a session nobody will clean up (ws closes
            # 1013); the wings undo what the welcome set up (a call back on its timer).
            if self.sessions.get(uid) is session:
                del self.sessions[uid]
                await self._leave(session, Departure.REFUSED)
            raise
        if session.closing:  # a newer connect on another node took the user meanwhile
            if self.sessions.get(uid) is session:
                del self.sessions[uid]
                await self._leave(session, Departure.MOVED)
            return session
        session.joining = False
        for callback in self._on_connect:
            try:
                await callback(session)
            except Exception:
                # What the callback pushes is retried on the next connect; the session stays.
                self._log.exception("on_connect callback failed for %s", uid)
        return session

    async def _join(self, session: Session, replay: list[bytes] | None, resuming: bool) -> None:
        uid, identity, sid = session.user_id, session.identity, session.session_id
        if session.closing:  # replaced here already (while the older one left)
            return
        # One live session per user, claimed in one step (two connects racing on two nodes
        # both see the other); the one it took over, on another node, closes (4009).
        took = await self._directory.claim(uid, sid, identity.role.value, identity.name)
        if took is not None and took.node_id != self.node_id:
            close = CloseSession(user_id=uid, session_id=took.session_id)
            await self._router.to_node(took.node_id, close)  # (even if this one is overtaken)
        if session.closing:
            return
        welcome = Welcome(
            session_id=sid,
            user=user_info(identity),
            heartbeat_s=self._settings.heartbeat_s,
            ice_servers=self._ice_servers(uid),
            media="p2p",
            resume_token=session.resume_token,
            resumed=session.resumed,
        )
        for part in self._welcome_parts:
            welcome = await part(session, welcome)
        if session.closing:  # overtaken meanwhile: no welcome, nothing joins
            return
        session.send(welcome)
        session.count_from_here()
        for frame in replay or ():
            session.send_frame(frame)
        if resuming and replay is None:
            # Said plainly, never silently: what was missed is not all here.
            message = "could not resume: reload state (calls, chat, wallet)"
            session.send(Error(code=ErrorCode.RESYNC_REQUIRED, message=message))
        for joined in self._on_join:
            await joined(session)

    async def disconnect(self, session: Session, *, resumable: bool = False) -> None:
        """The connection ended; ``resumable``: it dropped (not closed on purpose), so the
        session is parked for a resume if this hub keeps them (§3.1)."""
        uid = session.user_id
        if self.sessions.get(uid) is not session:
            return  # replaced: the newer session owns the user's presence and calls
        del self.sessions[uid]
        if resumable and self.parking is not None and session.resume_token is not None:
            try:
                parked = await self.parking.park(session)
            except Exception:
                self._log.exception("parking %s for a resume failed", uid)
            else:
                if parked:
                    await self._leave(session, Departure.DETACHED)
                return  # (not parked: a newer session replaced it meanwhile)
        await self._leave(session, Departure.GONE)

    async def evict(self, user_id: str, reason: str) -> None:
        """Close the user's session wherever it is (4003 ``reason``, not resumable): a ban."""
        await self._evict_here(evict := Evict(user_id=user_id, reason=reason))
        await self._router.broadcast(evict)

    async def _evict_here(self, message: Evict) -> None:
        parked, uid = self.parked(message.user_id), message.user_id
        if parked is not None and self.parking is not None:
            self.parking.drop(parked)
            await self._leave(parked, Departure.GONE)
        if (session := self.sessions.pop(uid, None)) is not None:
            session.close(CloseCode.FORBIDDEN, message.reason)
            await self._leave(session, Departure.GONE)

    async def _leave(self, session: Session, how: Departure) -> None:
        for callback in self._on_leave:
            await callback(session, how)

    async def shutdown(self) -> None:
        await self._lanes.close()
        if self.parking is not None:
            await self.parking.close()
        for session in list(self.sessions.values()):
            session.close(CloseCode.SERVICE_RESTART, "server restarting, reconnect")

    # --- frames in (§2, §6) -------------------------------------------------------------

    async def handle_frame(self, session: Session, frame: str | bytes) -> None:
        """One client frame in; replies go to ``session``'s queue."""
        if session.closing:
            return
        if not session.rate.allow():
            session.rate_strikes += 1
            if session.rate_strikes >= self._settings.flood_close_after:
                self.frames["-", ErrorCode.RATE_LIMITED] += 1
                session.close(CloseCode.POLICY, "rate limit exceeded")
            else:
                self._error(session, ErrorCode.RATE_LIMITED, "slow down", peek_id(frame))
            return
        session.rate_strikes = 0
        if isinstance(frame, bytes):
            rid = peek_id(frame)
            self._error(session, ErrorCode.BINARY_NOT_SUPPORTED, "send JSON text frames", rid)
            return
        limit = self._settings.max_frame_bytes
        if utf8_over(frame, limit):
            rid = peek_id(frame)
            self._error(session, ErrorCode.FRAME_TOO_LARGE, f"frame over {limit} bytes", rid)
            return
        try:
            message = decode(frame)
        except DecodeFailure as exc:
            self._error(session, exc.code, exc.message, exc.request_id)
            return
        route = self._handlers.get(type(message))
        if route is None:
            kind = str(type(message).__struct_config__.tag)
            text = f"{kind} is not enabled here"
            self._error(session, ErrorCode.UNKNOWN_TYPE, text, message.id, kind)
            return
        handler, kind, timed = route
        started = time.perf_counter() if timed else 0.0
        try:
            reply, effects = await handler(session, message)
        except JalwaError as exc:
            self._error(session, exc.code, exc.message, message.id, kind)
            return
        except Exception:
            # A store going away must not take the session with it: say so and carry on.
            self._log.exception(
                "handler failed: %s from %s", type(message).__name__, session.user_id
            )
            self._error(session, ErrorCode.UNAVAILABLE, "try again shortly", message.id, kind)
            return
        if message.id is not None and reply is not ANSWERED:
            session.send(reply if isinstance(reply, Ack) else Ack(id=message.id))
        for effect in effects:
            try:
                await effect.run()
            except Exception:
                # The request itself succeeded (and was acked); what failed is logged. The
                # wings' effect runners keep their state consistent on hook failures.
                self._log.exception("effects of %s failed", type(message).__name__)
        self.frames[kind, "ok"] += 1
        if timed and self.on_relayed is not None:
            self.on_relayed(time.perf_counter() - started)

    def _error(
        self, session: Session, code: str, message: str, rid: str | None, kind: str = "-"
    ) -> None:
        self.frames[kind, code] += 1  # kind "-": the frame never decoded
        session.send(Error(code=code, message=message, id=rid))

    # --- the inbox from other nodes (DESIGN §3) -----------------------------------------

    async def start_routing(self) -> None:
        await self._router.start(self._from_other_node)

    async def _from_other_node(self, message: NodeMessage) -> None:
        handler = self._node_handlers.get(type(message))
        if handler is None:
            self._log.warning("no handler for node message %s", type(message).__name__)
            return
        # In order per user (or per call); never behind another user's slow handler.
        user = getattr(message, "user_id", None)
        lane = f"u:{user}" if user else f"c:{getattr(message, 'call_id', '')}"
        self._lanes.run(lane, handler, message)

    def _frame_from_other_node(self, message: UserFrame) -> None:
        session = self._target(message.user_id)
        if session is not None:
            session.send_frame(message.frame)

    async def _close_from_other_node(self, message: CloseSession) -> None:
        parked = self.parked(message.user_id)
        if parked is not None and parked.session_id == message.session_id:
            # Resumed (or a fresh session) on another node, which owns the user now.
            assert self.parking is not None  # parked() found it there
            self.parking.drop(parked)
            await self._leave(parked, Departure.MOVED)
            return
        session = self.sessions.get(message.user_id)
        if session is not None and session.session_id == message.session_id:
            # The user connected on another node: this session is the older one (§7).
            if session.joining:  # connect() sees it closed, and has it leave
                session.close(CloseCode.REPLACED, "replaced by a newer session")
                return
            del self.sessions[message.user_id]
            session.close(CloseCode.REPLACED, "replaced by a newer session")
            await self._leave(session, Departure.MOVED)
