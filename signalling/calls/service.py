"""Calls on the hub (docs/protocol.md §5): the call.* handlers, the effects of the state
machine (frames, billing hooks, media), timers, and ending calls from outside (billing,
admin, the media watchdog, other nodes, shutdown).

A call runs on one node, its owner: the node where it was invited. Its other party may be
connected to any node (docs/architecture.md, "calls across nodes"): the owner keeps where
each party is (``_where``) and sends them frames through the bus; a party's node keeps the
calls its users are in elsewhere (``_remote``), forwards their call messages to the owner
(forward.py) and tells it when they come and go. The call directory (directory.py) is what
every node reads to know who is in a call.

The state machine (machine.py) decides; this module only carries its effects out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..auth import Identity, Role, user_info
from ..clock import Clock
from ..cluster.bus import EndCall
from ..errors import CallError
from ..port import DONE, Departure, HubPort, Outcome
from ..protocol import (
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
    EndReason,
    ErrorCode,
    MediaMode,
    ShownStatus,
    Welcome,
    shown_status,
)
from ..session import Session
from ..settings import HubSettings
from .directory import CallDirectory
from .forward import Forwarder, Op
from .hooks import CallHooks, CallRefused, EndFigures
from .machine import Call, CallBook, CallState, Deliver, Effect, Ended, Started, payer_and_host
from .parties import NodesAlive, Parties
from .relay import MediaServer, Reply, RtcRelay

InviteGuard = Callable[[Identity, Identity], Awaitable[None]]
MatchedEnded = Callable[[Call], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Run:
    """The state machine's effects, run after the handler's reply is queued."""

    calls: Calls
    effects: Sequence[Effect]

    async def run(self) -> None:
        await self.calls.carry_out(self.effects)


class Calls:
    def __init__(
        self,
        port: HubPort,
        *,
        settings: HubSettings,
        clock: Clock,
        hooks: CallHooks,
        directory: CallDirectory,
        nodes_alive: NodesAlive,
        media_server: MediaServer | None = None,
        record_policy: str = "off",
        refresh_presence: Callable[[str], Awaitable[None]] | None = None,
        invite_guards: Iterable[InviteGuard] = (),
        new_call_id: Callable[[], str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._port = port
        self.matched_ended: MatchedEnded | None = None  # the match wing re-queues its caller
        self.ended: Counter[str] = Counter()  # calls ended here, by reason (the metrics)
        self._clock = clock
        self._hooks = hooks
        # With a media server the call's media goes through it (sfu); otherwise the hub
        # only relays SDP/ICE between the parties (p2p) and cannot stop media itself.
        self._sfu = media_server
        self._media: MediaMode = "p2p" if media_server is None else "sfu"
        self._record_policy = record_policy  # media.recording: off, opt_in or always
        self._refresh = refresh_presence
        self._guards = list(invite_guards)
        self._log = logger or logging.getLogger(__name__)
        self._timer_moved = asyncio.Event()
        self.book = CallBook(
            ring_timeout_s=settings.ring_timeout_s,
            peer_lost_grace_s=settings.peer_lost_grace_s,
            on_new_deadline=self._timer_moved.set,
            **({"new_call_id": new_call_id} if new_call_id is not None else {}),
        )
        self.parties = Parties(
            port,
            self.book,
            directory,
            nodes_alive=nodes_alive,
            figures=hooks.figures,
            refresh=refresh_presence,
            logger=self._log,
        )
        self.directory = directory
        self._forwarder = Forwarder(port)
        send = self.parties.send
        self._relay = RtcRelay(port, self.book, media_server, send=send, records=self._records)
        self._ops: dict[type[ClientMessage], Op] = {
            CallAccept: self._accept,
            CallReject: self._reject,
            CallCancel: self._cancel,
            CallEnd: self._end,
            **{kind: self._relay.relay for kind in self._relay.kinds},
        }

    def install(self) -> None:
        port = self._port
        port.register(CallInvite, self._invite)
        for kind, op in self._ops.items():
            port.register(kind, self._routed(op))
        port.on_welcome(self._welcome)
        port.on_connect(self.parties.notices)
        port.on_leave(self._left)
        port.on_node_message(EndCall, self._end_from_other_node)
        self.parties.install(self._lost)
        self._forwarder.install(self._ops.get, self.carry_out)

    def in_call(self, user_id: str) -> bool:
        return (
            self.book.call_of(user_id) is not None or self.parties.remote_call(user_id) is not None
        )

    def current_call(self, user_id: str) -> str | None:
        """The id of the call the user is in, wherever it runs."""
        call = self.book.call_of(user_id)
        if call is not None:
            return call.call_id
        remote = self.parties.remote_call(user_id)
        return None if remote is None else remote.call_id

    async def hang_up(self, session: Session, call_id: str) -> None:
        """End the session's call as ``call.end`` would (match.next), wherever it runs."""
        _, effects = await self._routed(self._end)(session, CallEnd(call_id=call_id))
        for effect in effects:
            await effect.run()

    def active_peer(self, user_id: str, call_id: str) -> Identity:
        """The other party of ``user_id``'s active call ``call_id``, wherever it runs."""
        remote = self.parties.remote_call(user_id)
        if remote is not None and remote.call_id == call_id and self.book.get(call_id) is None:
            if remote.state != "active":
                raise CallError(f"call {call_id} is ringing", code=ErrorCode.INVALID_STATE)
            return remote.peer_of(user_id).identity()
        return self.book.require_active(user_id, call_id).peer_of(user_id)

    # --- the session lifecycle ----------------------------------------------------------

    async def _welcome(self, session: Session, welcome: Welcome) -> Welcome:
        # The user is back: their call (if any) stops waiting for them (§3, §5.4).
        uid = session.user_id
        if session.closing:
            return welcome  # overtaken by a newer connect: that one carries the call on
        call = self.book.party_back(uid)
        if call is not None:
            self.parties.joined(uid, (self._port.node_id, session.session_id))
            info: CallInfo | None = self.parties.entry(call).info(uid)
        else:
            info = await self.parties.welcome(session)  # a call another node runs
        return msgspec.structs.replace(welcome, media=self._media, call=info)

    async def _left(self, session: Session, how: Departure) -> None:
        if how is Departure.REPLACED_HERE:
            return  # the newer session here carries the call on
        # Its call waits out the grace period like any lost party's (also when the user
        # moved to another node, whose welcome brings it back, or could not join).
        uid = session.user_id
        if self.book.call_of(uid) is None:
            await self.parties.left(session, parked=how is Departure.DETACHED)
        elif self.parties.is_current(uid, session.session_id) and not self.book.is_lost(uid):
            await self._lost(uid)  # (a parked session that ends later changes nothing)

    async def _lost(self, user_id: str) -> None:
        await self.carry_out(self.book.party_lost(user_id, now=self._clock.monotonic()))

    # --- handlers (§5) ------------------------------------------------------------------

    async def _invite(self, session: Session, msg: CallInvite) -> Outcome:
        call, effects = await self._open(session, msg.to, record=msg.record)
        reply = Ack(id=msg.id, call_id=call.call_id) if msg.id is not None else None
        return reply, [_Run(self, effects)]

    async def invite_matched(
        self, session: Session, host_id: str, *, auto_accept: bool
    ) -> tuple[str, Callable[[], Awaitable[None]]]:
        """Ring a host matchmaking found for ``session``'s user (§10): the call id, and what
        to run once the caller has been told (``match.found`` comes before the ringing)."""
        call, effects = await self._open(session, host_id, record=False, match=True)

        async def ring() -> None:
            await self.carry_out(effects)
            if auto_accept and call.state is CallState.RINGING:
                now = self._clock.monotonic()
                await self.carry_out(self.book.accept(host_id, call.call_id, now=now, record=False))

        return call.call_id, ring

    async def _open(
        self, session: Session, to: str, *, record: bool, match: bool = False
    ) -> tuple[Call, list[Effect]]:
        callee, status, where = await self._callee(to)
        payer, host = payer_and_host(session.identity, callee)
        # Validate before asking billing, so a self-call is not reported as "no money".
        self.book.check_invite(session.identity, callee, callee_status=status)
        if self.parties.remote_call(session.user_id) is not None:
            raise CallError("you are already in a call", code=ErrorCode.ALREADY_IN_CALL)
        for guard in self._guards:
            await guard(session.identity, callee)
        await self._hooks.check_invite(payer, host)
        call, effects = self.book.invite(
            session.identity,
            callee,
            callee_status=status,
            now=self._clock.monotonic(),
            record=record,
            match=match,
        )
        entry = self.parties.entry(call)
        try:
            # Atomic across nodes: neither party may be in a call another node runs.
            busy = await self.directory.claim(entry)
        except Exception:
            self.book.withdraw(call.call_id)
            raise
        if busy is not None:
            self.book.withdraw(call.call_id)
            if busy == session.user_id:
                raise CallError("you are already in a call", code=ErrorCode.ALREADY_IN_CALL)
            raise CallError(f"{callee.user_id} is busy", code=ErrorCode.CALLEE_BUSY)
        self.parties.joined(session.user_id, (self._port.node_id, session.session_id))
        self.parties.joined(callee.user_id, where)
        await self.parties.tell(entry, in_call=True)
        await self._republish(call)
        return call, effects

    async def _callee(self, user_id: str) -> tuple[Identity, ShownStatus, tuple[str, str]]:
        """Who the callee is, their shown status, and the (node, session) they are on."""
        session = self._port.session_of(user_id)
        if session is not None:
            status: ShownStatus = "busy" if self.in_call(user_id) else session.status
            return session.identity, status, (self._port.node_id, session.session_id)
        pending = self.book.call_of(user_id)
        if pending is not None:  # disconnected but within the grace period
            return pending.party(user_id), "busy", ("", "")
        record = (await self._port.locate([user_id])).get(user_id)
        if record is None or record.status == "offline":  # (or parked, or still joining)
            entry = (await self.directory.of_users([user_id])).get(user_id)
            if entry is not None:  # between connections, in a call another node runs
                return entry.party(user_id).identity(), "busy", ("", "")
            raise CallError(f"{user_id} is offline", code=ErrorCode.CALLEE_OFFLINE)
        identity = Identity(record.user_id, Role(record.role), record.name)
        return identity, shown_status(record.status), (record.node_id, record.session_id)

    def _routed(self, op: Op) -> Callable[[Session, Any], Awaitable[Outcome]]:
        """The handler of a call message: run here, or on the node that owns the call."""

        async def handle(session: Session, msg: Any) -> Outcome:
            if self.book.get(msg.call_id) is None:
                owner = await self.parties.owner_of(session.user_id, msg.call_id)
                if owner is not None:
                    return await self._forwarder.ask(session, owner, msg)
            effects = await op(session.user_id, msg, session.send)
            # (Most frames are rtc.* relays, with no effects: no runner to build and await.)
            return (None, [_Run(self, effects)]) if effects else DONE

        return handle

    async def _accept(self, user_id: str, msg: CallAccept, reply: Reply) -> Sequence[Effect]:
        now = self._clock.monotonic()
        return self.book.accept(user_id, msg.call_id, now=now, record=msg.record)

    async def _reject(self, user_id: str, msg: CallReject, reply: Reply) -> Sequence[Effect]:
        return self.book.reject(user_id, msg.call_id, now=self._clock.monotonic())

    async def _cancel(self, user_id: str, msg: CallCancel, reply: Reply) -> Sequence[Effect]:
        return self.book.cancel(user_id, msg.call_id, now=self._clock.monotonic())

    async def _end(self, user_id: str, msg: CallEnd, reply: Reply) -> Sequence[Effect]:
        return self.book.hang_up(user_id, msg.call_id, now=self._clock.monotonic())

    def _records(self, call: Call) -> bool:
        """Record this call? Always, never, or when both parties asked (opt_in)."""
        if self._record_policy == "always":
            return True
        return self._record_policy == "opt_in" and call.record

    # --- from outside: billing, admin, the media watchdog, other nodes, time ------------

    async def end_call(self, call_id: str, reason: EndReason) -> bool:
        """End a call running here for an outside reason; False if it was not running."""
        effects = self.book.end(call_id, reason, now=self._clock.monotonic())
        await self.carry_out(effects)
        return bool(effects)

    async def end_call_anywhere(self, call_id: str, reason: EndReason) -> bool:
        """End a call wherever it runs; False if it runs nowhere (or its node died)."""
        if await self.end_call(call_id, reason):
            return True
        entry = await self.directory.by_id(call_id)
        if entry is None or entry.owner == self._port.node_id:
            return False
        if not await self.parties.alive(entry.owner):
            return False  # its entry outlives the node by less than the node's TTL
        await self._port.to_node(entry.owner, EndCall(call_id=call_id, reason=reason.value))
        return True

    async def tell_ended(
        self, call_id: str, reason: EndReason, figures: EndFigures, parties: Iterable[str]
    ) -> None:
        """A call no node runs any more ended (the ledger found it orphaned)."""
        await self.parties.tell_ended(call_id, reason, figures, parties)

    async def _end_from_other_node(self, message: EndCall) -> None:
        await self.end_call(message.call_id, EndReason(message.reason))

    async def media_failed(self, call_id: str, party: str) -> None:
        """The SFU's watchdog: ``party``'s media never connected (or failed and was not
        renegotiated) within ``media.connect_timeout_s``. Billing stops with the call."""
        self._log.warning("call %s: media of %s failed, ending the call", call_id, party)
        await self.end_call(call_id, EndReason.MEDIA_FAILED)

    async def beat(self) -> None:
        """With the presence beat: the directory and the calls of dead nodes (parties.py)."""
        await self.parties.beat(self.end_call)

    async def tick(self) -> None:
        """Fire due timers (ring timeouts, peer-lost grace periods)."""
        await self.carry_out(self.book.expire(self._clock.monotonic()))

    async def run_timers(self) -> None:
        """Forever: sleep until the earliest deadline (or until an earlier one is set),
        then fire what is due. No polling."""
        while True:
            deadline = self.book.next_deadline()
            self._timer_moved.clear()
            waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._timer_moved.wait())}
            if deadline is not None:
                delay = max(0.0, deadline - self._clock.monotonic())
                waits.add(asyncio.ensure_future(self._clock.sleep(delay)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiting
            try:
                await self.tick()
            except Exception:
                self._log.exception("call timers failed")

    async def shutdown(self) -> None:
        now = self._clock.monotonic()
        for call in self.book.active_calls():
            await self.carry_out(self.book.end(call.call_id, EndReason.SHUTDOWN, now=now))

    # --- effects ------------------------------------------------------------------------

    async def carry_out(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Deliver):
                await self.parties.send(effect.user_id, effect.message)
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
        caller, callee = call.parties()
        bound = {"call_id": call.call_id, "caller": caller, "callee": callee, "rate": terms.rate}
        self._log.info("call started", extra=bound)
        entry = self.parties.entry(call)
        try:
            await self.directory.update(entry)
        except Exception:
            # Other nodes read it as ringing until the next refresh; the call runs anyway.
            self._log.exception("directory update for %s failed", call.call_id)
        await self.parties.tell(entry, in_call=True)
        for uid in call.parties():
            await self.parties.send(
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
            await self.parties.send(call.payer.user_id, warning)
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
        self.ended[ended.reason] += 1
        figures_of = {"minutes": ended.minutes, "coins": ended.coins, "reason": ended.reason}
        self._log.info("call ended", extra={"call_id": call.call_id, **figures_of})
        for uid in call.parties():
            await self.parties.send(uid, ended)
        entry = self.parties.entry(call)
        try:
            await self.directory.release(entry)
        except Exception:
            # The entry lapses by itself (nobody refreshes it any more).
            self._log.exception("directory release for %s failed", call.call_id)
        await self.parties.tell(entry, in_call=False)
        self.parties.ended(call)
        await self._republish(call)
        if call.match and self.matched_ended is not None:
            try:
                await self.matched_ended(call)
            except Exception:
                self._log.exception("matchmaking after the end of %s failed", call.call_id)

    async def _republish(self, call: Call) -> None:
        if self._refresh is not None:
            for uid in call.parties():
                await self._refresh(uid)
