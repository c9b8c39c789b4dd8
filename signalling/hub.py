"""The signalling hub: sessions, presence fan-out, call set-up and the SDP/ICE relay.

Handlers take a Session and a decoded message; nothing here touches a socket (ws.py does),
so tests drive the hub with plain calls. Section numbers (§) refer to docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from media.errors import MediaError, UnknownLeg
from turn.credentials import ice_servers as turn_ice_servers
from turn.settings import TurnSettings

from .auth import Identity, Role
from .calls import (
    Call,
    CallBook,
    CallState,
    Deliver,
    Effect,
    Ended,
    Started,
    payer_and_host,
    user_info,
)
from .clock import Clock
from .errors import CallError, JalwaError
from .presence import PresenceRecord, PresenceStore
from .protocol import (
    Ack,
    BillingLowBalance,
    CallAccept,
    CallCancel,
    CallEnd,
    CallEnded,
    CallInfo,
    CallInvite,
    CallReject,
    CallStarted,
    ClientMessage,
    CloseCode,
    DecodeFailure,
    EndReason,
    Error,
    ErrorCode,
    IceServerInfo,
    MediaMode,
    PresenceChanged,
    PresenceUnwatch,
    PresenceUpdate,
    PresenceWatch,
    RtcAnswer,
    RtcAnswerOut,
    RtcIce,
    RtcIceOut,
    RtcOffer,
    RtcOfferOut,
    ServerMessage,
    Welcome,
    decode,
    encode,
    peek_id,
)
from .router import LocalRouter, NodeMessage, Router
from .session import Session
from .settings import HubSettings


@dataclass(frozen=True, slots=True)
class StartTerms:
    rate: int = 0
    balance: int | None = None
    # Set when fewer paid minutes remain than the warning threshold: the payer is warned
    # with call.started, not only at the next tick (§5.6).
    low_balance_minutes_left: int | None = None


@dataclass(frozen=True, slots=True)
class EndFigures:
    minutes: int = 0
    coins: int = 0


class CallRefused(JalwaError):
    """Raised by CallHooks.call_started to end a call that may not run (e.g. no money)."""

    def __init__(self, message: str, reason: EndReason) -> None:
        super().__init__(message)
        self.reason = reason


class CallHooks(Protocol):
    """What the hub asks of the money side of the service (billing plugs in here).

    Methods raise JalwaError subclasses with protocol error codes; ``call_started`` raises
    CallRefused to end a call that may not run.
    """

    async def check_invite(self, payer: Identity, host: Identity) -> None:
        """Refuse (e.g. insufficient_balance) before anyone is rung."""

    async def call_started(self, call: Call) -> StartTerms: ...

    async def call_ended(self, call: Call) -> EndFigures: ...


class MediaServer(Protocol):
    """The SFU as the hub uses it (media/sfu.py); errors are media.errors.MediaError."""

    async def answer(
        self, call_id: str, party: str, offer_sdp: str, *, record: bool = False
    ) -> str: ...

    async def add_candidate(
        self,
        call_id: str,
        party: str,
        candidate: str,
        sdp_mid: str | None,
        sdp_mline_index: int | None,
    ) -> None: ...

    async def close_call(self, call_id: str) -> None: ...

    def expect(self, call_id: str, parties: Iterable[str]) -> None: ...


class FreeCalls:
    """Hooks for a hub without billing: nothing is charged and there are no gifts."""

    async def check_invite(self, payer: Identity, host: Identity) -> None:
        return None

    async def call_started(self, call: Call) -> StartTerms:
        return StartTerms()

    async def call_ended(self, call: Call) -> EndFigures:
        return EndFigures()


# A handler returns its reply (None: a plain ack) and the effects to run after the reply,
# so the requester hears its ack (with the call id) before the call's events.
Outcome = tuple[Ack | None, list[Effect]]
Handler = Callable[[Session, Any], Awaitable[Outcome]]
DONE: Outcome = (None, [])
SFU_SENDER = "sfu"  # the ``from`` of frames the server's own peer connection sends


class Hub:
    def __init__(
        self,
        *,
        settings: HubSettings,
        presence: PresenceStore,
        clock: Clock,
        hooks: CallHooks,
        router: Router | None = None,
        media_server: MediaServer | None = None,
        record_policy: str = "off",
        turn: TurnSettings | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._turn = turn or TurnSettings()
        # With a media server the call's media goes through it (sfu); otherwise the hub only
        # relays SDP/ICE between the parties (p2p) and cannot stop media itself.
        self._sfu = media_server
        self._record_policy = record_policy  # media.recording: off, opt_in or always
        self._router: Router = router or LocalRouter()
        self._settings = settings
        self._presence = presence
        self._clock = clock
        self._hooks = hooks
        self._media: MediaMode = "p2p" if media_server is None else "sfu"
        self._log = logger or logging.getLogger(__name__)
        self._ice = [
            IceServerInfo(urls=s.urls, username=s.username, credential=s.credential)
            for s in settings.ice_servers
        ]
        self.calls = CallBook(
            ring_timeout_s=settings.ring_timeout_s,
            peer_lost_grace_s=settings.peer_lost_grace_s,
        )
        self.sessions: dict[str, Session] = {}
        self._watchers: dict[str, set[Session]] = {}
        self._shown: dict[str, str] = {}  # last status announced per local user
        self._handlers: dict[type[ClientMessage], Handler] = {
            PresenceUpdate: self._presence_update,
            PresenceWatch: self._presence_watch,
            PresenceUnwatch: self._presence_unwatch,
            CallInvite: self._call_invite,
            CallAccept: self._call_accept,
            CallReject: self._call_reject,
            CallCancel: self._call_cancel,
            CallEnd: self._call_end,
            RtcOffer: self._rtc_relay,
            RtcAnswer: self._rtc_relay,
            RtcIce: self._rtc_relay,
        }
        self._on_connect: list[Callable[[Session], Awaitable[None]]] = []
        self._invite_guards: list[Callable[[Identity, Identity], Awaitable[None]]] = []

    # --- extension points: other services plug their messages in (chat, ...) -------------

    def register(self, kind: type[ClientMessage], handler: Handler) -> None:
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} already has a handler")
        self._handlers[kind] = handler

    def on_connect(self, callback: Callable[[Session], Awaitable[None]]) -> None:
        """Run after a session's welcome (e.g. push what arrived while it was away)."""
        self._on_connect.append(callback)

    def invite_guard(self, guard: Callable[[Identity, Identity], Awaitable[None]]) -> None:
        """Checked on every call.invite (caller, callee); raises JalwaError to refuse."""
        self._invite_guards.append(guard)

    # --- connection lifecycle (§3) ------------------------------------------------------

    async def connect(self, identity: Identity) -> Session:
        hub = self._settings
        session = Session(
            identity,
            clock=self._clock,
            send_queue_max=hub.send_queue_max,
            send_queue_max_bytes=hub.send_queue_max_bytes,
            rate_per_s=hub.rate_per_s,
            rate_burst=hub.rate_burst,
        )
        elsewhere = (await self._presence.get_many([identity.user_id])).get(identity.user_id)
        if elsewhere is not None and elsewhere.node_id != self._presence.node_id:
            close = NodeMessage("close", user_id=identity.user_id, session_id=elsewhere.session_id)
            await self._router.to_node(elsewhere.node_id, close)
        old = self.sessions.get(identity.user_id)
        if old is not None:
            self._unwatch_all(old)
            old.close(CloseCode.REPLACED, "replaced by a newer session")
        self.sessions[identity.user_id] = session
        call = self.calls.party_back(identity.user_id)
        session.send(
            Welcome(
                session_id=session.session_id,
                user=user_info(identity),
                heartbeat_s=hub.heartbeat_s,
                ice_servers=self._ice_servers(identity.user_id),
                media=self._media,
                call=self._call_info(call, identity.user_id) if call is not None else None,
            )
        )
        try:
            await self._publish(session)
        except Exception:
            # The store is away: do not keep a session nobody will clean up (ws closes 1013),
            # and put the user's call back on its grace timer (party_back cancelled it), or
            # it would run, and be billed, with nobody there.
            if self.sessions.get(identity.user_id) is session:
                del self.sessions[identity.user_id]
                now = self._clock.monotonic()
                await self._run(self.calls.party_lost(identity.user_id, now=now))
            raise
        current = self.sessions.get(identity.user_id)
        if current is not session and current is not None:
            # A newer connect of this user overtook ours while we were publishing: its
            # record must be the one that stays, or presence would name a closed session.
            await self._publish(current)
        for callback in self._on_connect:
            try:
                await callback(session)
            except Exception:
                # What the callback pushes is retried on the next connect; the session stays.
                self._log.exception("on_connect callback failed for %s", identity.user_id)
        return session

    def _ice_servers(self, user_id: str) -> list[IceServerInfo]:
        """Configured servers plus short-lived TURN credentials for this user (DESIGN §6)."""
        minted = turn_ice_servers(self._turn, user_id, self._clock.time())
        return [*self._ice, *(IceServerInfo(**server) for server in minted)]

    async def disconnect(self, session: Session) -> None:
        self._unwatch_all(session)
        uid = session.user_id
        if self.sessions.get(uid) is not session:
            return  # replaced: the newer session owns the user's presence and calls
        del self.sessions[uid]
        self._shown.pop(uid, None)
        await self._run(self.calls.party_lost(uid, now=self._clock.monotonic()))
        cleared = False
        try:
            cleared = await self._presence.clear(uid, session.session_id)
        finally:
            # A record that is not ours any more belongs to a newer session (maybe on another
            # node): then the user is not offline.
            if cleared or uid not in await self._presence.get_many([uid]):
                await self._announce(uid, "offline")

    async def handle_frame(self, session: Session, frame: str | bytes) -> None:
        """One client frame in; replies go to ``session``'s queue (§2, §6)."""
        if session.closing:
            return
        if not session.rate.allow():
            session.rate_strikes += 1
            if session.rate_strikes >= self._settings.flood_close_after:
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
        # The cap is in UTF-8 bytes; a str has at most 4 per character, so most frames are
        # measured without encoding them.
        if len(frame) > limit or (
            len(frame) * 4 > limit and len(frame.encode("utf-8", "surrogatepass")) > limit
        ):
            rid = peek_id(frame)
            self._error(session, ErrorCode.FRAME_TOO_LARGE, f"frame over {limit} bytes", rid)
            return
        try:
            message = decode(frame)
        except DecodeFailure as exc:
            self._error(session, exc.code, exc.message, exc.request_id)
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            kind = type(message).__struct_config__.tag
            self._error(session, ErrorCode.UNKNOWN_TYPE, f"{kind} is not enabled here", message.id)
            return
        try:
            reply, effects = await handler(session, message)
        except JalwaError as exc:
            self._error(session, exc.code, exc.message, message.id)
            return
        except Exception:
            # A store going away must not take the session with it: say so and carry on.
            self._log.exception(
                "handler failed: %s from %s", type(message).__name__, session.user_id
            )
            self._error(session, ErrorCode.UNAVAILABLE, "try again shortly", message.id)
            return
        if message.id is not None:
            session.send(reply if reply is not None else Ack(id=message.id))
        try:
            await self._run(effects)
        except Exception:
            # The request itself succeeded (and was acked); what failed is logged. The
            # effect runners below already keep calls consistent on hook failures.
            self._log.exception("effects of %s failed", type(message).__name__)

    # --- from outside: billing, admin, timers, shutdown ---------------------------------

    def deliver(self, user_id: str, message: ServerMessage) -> bool:
        """Send to the user's session on this node; False if they have none here."""
        session = self.sessions.get(user_id)
        if session is None:
            return False
        session.send(message)
        return True

    async def deliver_anywhere(self, user_id: str, *messages: ServerMessage) -> bool:
        """Send to the user's session on whichever node holds it, in order; False if
        offline. Several messages for one user cost one presence look-up."""
        session = self.sessions.get(user_id)
        if session is not None:
            for message in messages:
                session.send(message)
            return True
        record = (await self._presence.get_many([user_id])).get(user_id)
        if record is None or record.node_id == self._presence.node_id:
            return False
        for message in messages:
            frame = NodeMessage("frame", user_id=user_id, frame=encode(message))
            await self._router.to_node(record.node_id, frame)
        return True

    async def end_call_anywhere(self, call_id: str, reason: EndReason, *parties: str) -> bool:
        """End a call here, or on the node of one of its ``parties`` (the node that runs it;
        a party in its grace period has no presence, so every party is tried)."""
        if await self.end_call(call_id, reason):
            return True
        records = await self._presence.get_many(parties)
        nodes = {r.node_id for r in records.values()} - {self._presence.node_id}
        message = NodeMessage("end_call", call_id=call_id, reason=reason.value)
        for node in nodes:
            await self._router.to_node(node, message)
        return bool(nodes)

    async def start_routing(self) -> None:
        await self._router.start(self._from_other_node)

    async def _from_other_node(self, message: NodeMessage) -> None:
        if message.kind == "frame":
            session = self.sessions.get(message.user_id)
            if session is not None:
                session.send_frame(message.frame)
        elif message.kind == "close":
            session = self.sessions.get(message.user_id)
            if session is not None and session.session_id == message.session_id:
                # The user connected on another node: this session is the older one (§7).
                self._unwatch_all(session)
                del self.sessions[message.user_id]
                self._shown.pop(message.user_id, None)
                session.close(CloseCode.REPLACED, "replaced by a newer session")
                # Its calls here wait out the grace period like any lost party's.
                now = self._clock.monotonic()
                await self._run(self.calls.party_lost(message.user_id, now=now))
        elif message.kind == "end_call":
            await self.end_call(message.call_id, EndReason(message.reason))
        elif message.kind == "presence":
            self._notify(message.user_id, message.status)

    async def end_call(self, call_id: str, reason: EndReason) -> bool:
        """End a call for an outside reason; False if it was not running."""
        effects = self.calls.end(call_id, reason, now=self._clock.monotonic())
        await self._run(effects)
        return bool(effects)

    async def media_failed(self, call_id: str, party: str) -> None:
        """The SFU's watchdog: ``party``'s media never connected (or failed and was not
        renegotiated) within ``media.connect_timeout_s``. Billing stops with the call."""
        self._log.warning("call %s: media of %s failed, ending the call", call_id, party)
        await self.end_call(call_id, EndReason.MEDIA_FAILED)

    async def tick(self) -> None:
        """Fire due timers (ring timeouts, peer-lost grace periods)."""
        await self._run(self.calls.expire(self._clock.monotonic()))

    async def beat(self) -> None:
        """Keep this node's presence alive and clear what dead nodes left behind."""
        await self._presence.beat(list(self.sessions))
        for uid in await self._presence.sweep():
            if uid not in self.sessions:
                await self._announce(uid, "offline")

    async def shutdown(self) -> None:
        now = self._clock.monotonic()
        for call in self.calls.active_calls():
            await self._run(self.calls.end(call.call_id, EndReason.SHUTDOWN, now=now))
        for session in list(self.sessions.values()):
            session.close(CloseCode.SERVICE_RESTART, "server restarting, reconnect")

    # --- presence (§4) ------------------------------------------------------------------

    async def _presence_update(self, session: Session, msg: PresenceUpdate) -> Outcome:
        session.status = msg.status
        if msg.location is not None:
            session.location = (msg.location.lat, msg.location.lon)
        await self._publish(session)
        return DONE

    async def _presence_watch(self, session: Session, msg: PresenceWatch) -> Outcome:
        wanted = set(msg.user_ids)
        if len(session.watching | wanted) > self._settings.presence_watch_max:
            raise JalwaError(
                f"at most {self._settings.presence_watch_max} watched users",
                code=ErrorCode.TOO_MANY_WATCHES,
            )
        for uid in wanted:
            self._watchers.setdefault(uid, set()).add(session)
        session.watching |= wanted
        records = await self._presence.get_many(wanted)
        shown = {uid: records[uid].status if uid in records else "offline" for uid in wanted}
        return (Ack(id=msg.id, presence=shown) if msg.id is not None else None), []  # type: ignore[arg-type]

    async def _presence_unwatch(self, session: Session, msg: PresenceUnwatch) -> Outcome:
        for uid in msg.user_ids:
            if uid in session.watching:
                session.watching.discard(uid)
                self._drop_watcher(uid, session)
        return DONE

    def _shown_status(self, session: Session) -> str:
        return "busy" if self.calls.call_of(session.user_id) is not None else session.status

    async def _publish(self, session: Session) -> None:
        status = self._shown_status(session)
        ident = session.identity
        lat, lon = session.location if session.location is not None else (None, None)
        await self._presence.set(
            PresenceRecord(
                user_id=ident.user_id,
                status=status,
                role=ident.role.value,
                name=ident.name,
                node_id=self._presence.node_id,
                session_id=session.session_id,
                lat=lat,
                lon=lon,
            )
        )
        if self._shown.get(ident.user_id) != status:
            self._shown[ident.user_id] = status
            await self._announce(ident.user_id, status)

    async def _announce(self, user_id: str, status: str) -> None:
        """Tell watchers here, and the other nodes for theirs."""
        self._notify(user_id, status)
        try:
            await self._router.broadcast_presence(user_id, status)
        except Exception:
            self._log.exception("presence broadcast for %s failed", user_id)

    def _notify(self, user_id: str, status: str) -> None:
        watchers = self._watchers.get(user_id)
        if watchers:
            frame = encode(PresenceChanged(user_id=user_id, status=status))  # type: ignore[arg-type]
            for watcher in watchers:
                watcher.send_frame(frame)

    def _unwatch_all(self, session: Session) -> None:
        for uid in session.watching:
            self._drop_watcher(uid, session)
        session.watching.clear()

    def _drop_watcher(self, user_id: str, session: Session) -> None:
        watchers = self._watchers.get(user_id)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self._watchers[user_id]

    # --- calls (§5) ---------------------------------------------------------------------

    async def _call_invite(self, session: Session, msg: CallInvite) -> Outcome:
        callee_session = self.sessions.get(msg.to)
        if callee_session is not None:
            callee, status = callee_session.identity, self._shown_status(callee_session)
        else:
            pending = self.calls.call_of(msg.to)
            if pending is not None:  # disconnected but within the grace period
                callee, status = pending.party(msg.to), "busy"
            else:
                await self._require_local(msg.to)
                raise CallError(f"{msg.to} is offline", code=ErrorCode.CALLEE_OFFLINE)
        payer, host = payer_and_host(session.identity, callee)
        # Validate before asking billing, so a self-call is not reported as "no money".
        self.calls.check_invite(session.identity, callee, callee_status=status)
        for guard in self._invite_guards:
            await guard(session.identity, callee)
        await self._hooks.check_invite(payer, host)
        call, effects = self.calls.invite(
            session.identity,
            callee,
            callee_status=status,
            now=self._clock.monotonic(),
            record=msg.record,
        )
        await self._republish(call)
        return (Ack(id=msg.id, call_id=call.call_id) if msg.id is not None else None), effects

    async def _require_local(self, user_id: str) -> None:
        records = await self._presence.get_many([user_id])
        if user_id in records and records[user_id].node_id != self._presence.node_id:
            raise CallError(
                f"{user_id} is connected to another node; cross-node calls are not supported yet",
                code=ErrorCode.CALLEE_UNREACHABLE,
            )

    async def _call_accept(self, session: Session, msg: CallAccept) -> Outcome:
        now = self._clock.monotonic()
        return None, self.calls.accept(session.user_id, msg.call_id, now=now, record=msg.record)

    async def _call_reject(self, session: Session, msg: CallReject) -> Outcome:
        return None, self.calls.reject(session.user_id, msg.call_id, now=self._clock.monotonic())

    async def _call_cancel(self, session: Session, msg: CallCancel) -> Outcome:
        return None, self.calls.cancel(session.user_id, msg.call_id, now=self._clock.monotonic())

    async def _call_end(self, session: Session, msg: CallEnd) -> Outcome:
        return None, self.calls.hang_up(session.user_id, msg.call_id, now=self._clock.monotonic())

    async def _rtc_relay(self, session: Session, msg: RtcOffer | RtcAnswer | RtcIce) -> Outcome:
        call = self.calls.require_active(session.user_id, msg.call_id)
        if self._sfu is not None:
            return await self._rtc_sfu(self._sfu, session, call, msg)
        peer = self.sessions.get(call.peer_of(session.user_id).user_id)
        if peer is None:
            return DONE  # peer within its grace period: it renegotiates when it is back
        out: ServerMessage
        if isinstance(msg, RtcOffer):
            out = RtcOfferOut(call_id=call.call_id, sender=session.user_id, sdp=msg.sdp)
        elif isinstance(msg, RtcAnswer):
            out = RtcAnswerOut(call_id=call.call_id, sender=session.user_id, sdp=msg.sdp)
        else:
            out = RtcIceOut(
                call_id=call.call_id,
                sender=session.user_id,
                candidate=msg.candidate,
                sdp_mid=msg.sdp_mid,
                sdp_mline_index=msg.sdp_mline_index,
            )
        peer.send(out)
        return DONE

    async def _rtc_sfu(
        self, sfu: MediaServer, session: Session, call: Call, msg: RtcOffer | RtcAnswer | RtcIce
    ) -> Outcome:
        """§5.5: each party negotiates one peer connection with the server."""
        try:
            if isinstance(msg, RtcOffer):
                answer = await sfu.answer(
                    call.call_id, session.user_id, msg.sdp, record=self._records(call)
                )
                if call.state is not CallState.ACTIVE:
                    await sfu.close_call(call.call_id)  # ended while we negotiated
                    raise CallError(f"call {call.call_id} has ended", code=ErrorCode.INVALID_STATE)
                session.send(RtcAnswerOut(call_id=call.call_id, sender=SFU_SENDER, sdp=answer))
            elif isinstance(msg, RtcAnswer):
                raise JalwaError(
                    "in sfu mode the server never offers; send rtc.offer",
                    code=ErrorCode.INVALID_STATE,
                )
            else:
                await sfu.add_candidate(
                    call.call_id,
                    session.user_id,
                    msg.candidate or "",
                    msg.sdp_mid,
                    msg.sdp_mline_index,
                )
        except UnknownLeg as exc:
            raise JalwaError(f"send rtc.offer first: {exc}", code=ErrorCode.INVALID_STATE) from exc
        except MediaError as exc:
            raise JalwaError(str(exc), code=ErrorCode.MEDIA_FAILED) from exc
        return DONE

    def _records(self, call: Call) -> bool:
        """Record this call? Always, never, or when both parties asked (opt_in)."""
        if self._record_policy == "always":
            return True
        return self._record_policy == "opt_in" and call.record

    async def _run(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Deliver):
                self.deliver(effect.user_id, effect.message)
            elif isinstance(effect, Started):
                await self._started(effect.call)
            elif isinstance(effect, Ended):
                await self._ended(effect.call)

    async def _started(self, call: Call) -> None:
        try:
            terms = await self._hooks.call_started(call)
        except CallRefused as exc:
            self._log.info("call %s refused: %s", call.call_id, exc.message)
            await self.end_call(call.call_id, exc.reason)
            return
        except Exception:
            # A call that cannot be set up for billing must not run unbilled.
            self._log.exception("call_started hook failed for %s", call.call_id)
            await self.end_call(call.call_id, EndReason.CANCELLED)
            return
        if call.state is not CallState.ACTIVE:
            return  # ended while the hook ran; call.ended has been sent
        for uid in call.parties():
            self.deliver(
                uid,
                CallStarted(
                    call_id=call.call_id,
                    peer=user_info(call.peer_of(uid)),
                    media=self._media,
                    rate=terms.rate,
                    balance=terms.balance if uid == call.payer.user_id else None,
                    record=call.record,
                ),
            )
        if terms.low_balance_minutes_left is not None:
            warning = BillingLowBalance(
                call_id=call.call_id, minutes_left=terms.low_balance_minutes_left
            )
            self.deliver(call.payer.user_id, warning)
        if self._sfu is not None:
            self._sfu.expect(call.call_id, call.parties())  # the media watchdog starts

    async def _ended(self, call: Call) -> None:
        if self._sfu is not None:
            try:
                await self._sfu.close_call(call.call_id)  # media stops first (within 1 s)
            except Exception:
                self._log.exception("closing media of %s failed", call.call_id)
        try:
            figures = await self._hooks.call_ended(call)
        except Exception:
            self._log.exception("call_ended hook failed for %s", call.call_id)
            figures = EndFigures()
        ended = CallEnded(
            call_id=call.call_id,
            reason=call.end_reason or EndReason.HANGUP,
            minutes=figures.minutes,
            coins=figures.coins,
        )
        for uid in call.parties():
            self.deliver(uid, ended)
        await self._republish(call)

    async def _republish(self, call: Call) -> None:
        for uid in call.parties():
            target = self.sessions.get(uid)
            if target is not None:
                try:
                    await self._publish(target)
                except Exception:
                    # Presence catches up at the user's next update; the call must go on.
                    self._log.exception("presence update for %s failed", uid)

    async def find_user(self, user_id: str) -> Identity | None:
        """Who an online user is (this node's session, or their presence record)."""
        session = self.sessions.get(user_id)
        if session is not None:
            return session.identity
        record = (await self._presence.get_many([user_id])).get(user_id)
        if record is None:
            return None
        return Identity(record.user_id, Role(record.role), record.name)

    def _call_info(self, call: Call, user_id: str) -> CallInfo:
        return CallInfo(
            call_id=call.call_id,
            state="active" if call.state is CallState.ACTIVE else "ringing",
            peer=user_info(call.peer_of(user_id)),
            role="caller" if user_id == call.caller.user_id else "callee",
        )

    def _error(self, session: Session, code: str, message: str, request_id: str | None) -> None:
        session.send(Error(code=code, message=message, id=request_id))
