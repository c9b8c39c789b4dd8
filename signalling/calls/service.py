"""Calls on the hub (docs/protocol.md §5): the call.* handlers, the effects of the state
machine (frames, billing hooks, media), timers, and ending calls from outside (billing,
admin, the media watchdog, other nodes, shutdown).

The state machine (machine.py) decides; this module only carries its effects out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from ..auth import Identity, user_info
from ..clock import Clock
from ..cluster.bus import EndCall
from ..errors import CallError
from ..port import Departure, HubPort, Outcome
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
    EndReason,
    ErrorCode,
    MediaMode,
    ShownStatus,
    Welcome,
)
from ..session import Session
from ..settings import HubSettings
from .hooks import CallHooks, CallRefused, EndFigures
from .machine import Call, CallBook, CallState, Deliver, Effect, Ended, Started, payer_and_host
from .relay import MediaServer, RtcRelay

InviteGuard = Callable[[Identity, Identity], Awaitable[None]]


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
        media_server: MediaServer | None = None,
        record_policy: str = "off",
        refresh_presence: Callable[[str], Awaitable[None]] | None = None,
        invite_guards: Iterable[InviteGuard] = (),
        new_call_id: Callable[[], str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._port = port
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
        self._relay = RtcRelay(port, self.book, media_server, records=self._records)

    def install(self) -> None:
        port = self._port
        port.register(CallInvite, self._invite)
        port.register(CallAccept, self._accept)
        port.register(CallReject, self._reject)
        port.register(CallCancel, self._cancel)
        port.register(CallEnd, self._end)
        self._relay.install()
        port.on_welcome(self._welcome)
        port.on_leave(self._left)
        port.on_node_message(EndCall, self._end_from_other_node)

    def in_call(self, user_id: str) -> bool:
        return self.book.call_of(user_id) is not None

    # --- the session lifecycle ----------------------------------------------------------

    def _welcome(self, session: Session, welcome: Welcome) -> Welcome:
        # The user is back: their call (if any) stops waiting for them (§3, §5.4).
        call = self.book.party_back(session.user_id)
        info = self._call_info(call, session.user_id) if call is not None else None
        return msgspec.structs.replace(welcome, media=self._media, call=info)

    async def _left(self, session: Session, how: Departure) -> None:
        if how is Departure.REPLACED_HERE:
            return  # the newer session here carries the call on
        # Its call waits out the grace period like any lost party's (also when the user
        # moved to another node, or could not join after the welcome gave the call back).
        await self.carry_out(self.book.party_lost(session.user_id, now=self._clock.monotonic()))

    def _call_info(self, call: Call, user_id: str) -> CallInfo:
        return CallInfo(
            call_id=call.call_id,
            state="active" if call.state is CallState.ACTIVE else "ringing",
            peer=user_info(call.peer_of(user_id)),
            role="caller" if user_id == call.caller.user_id else "callee",
        )

    # --- handlers (§5) ------------------------------------------------------------------

    async def _invite(self, session: Session, msg: CallInvite) -> Outcome:
        callee, status = await self._callee(msg.to)
        payer, host = payer_and_host(session.identity, callee)
        # Validate before asking billing, so a self-call is not reported as "no money".
        self.book.check_invite(session.identity, callee, callee_status=status)
        for guard in self._guards:
            await guard(session.identity, callee)
        await self._hooks.check_invite(payer, host)
        call, effects = self.book.invite(
            session.identity,
            callee,
            callee_status=status,
            now=self._clock.monotonic(),
            record=msg.record,
        )
        await self._republish(call)
        reply = Ack(id=msg.id, call_id=call.call_id) if msg.id is not None else None
        return reply, [_Run(self, effects)]

    async def _callee(self, user_id: str) -> tuple[Identity, ShownStatus]:
        session = self._port.session_of(user_id)
        if session is not None:
            return session.identity, "busy" if self.in_call(user_id) else session.status
        pending = self.book.call_of(user_id)
        if pending is not None:  # disconnected but within the grace period
            return pending.party(user_id), "busy"
        records = await self._port.locate([user_id])
        if user_id in records and records[user_id].node_id != self._port.node_id:
            raise CallError(
                f"{user_id} is connected to another node; cross-node calls are not supported yet",
                code=ErrorCode.CALLEE_UNREACHABLE,
            )
        raise CallError(f"{user_id} is offline", code=ErrorCode.CALLEE_OFFLINE)

    async def _accept(self, session: Session, msg: CallAccept) -> Outcome:
        now = self._clock.monotonic()
        effects = self.book.accept(session.user_id, msg.call_id, now=now, record=msg.record)
        return None, [_Run(self, effects)]

    async def _reject(self, session: Session, msg: CallReject) -> Outcome:
        effects = self.book.reject(session.user_id, msg.call_id, now=self._clock.monotonic())
        return None, [_Run(self, effects)]

    async def _cancel(self, session: Session, msg: CallCancel) -> Outcome:
        effects = self.book.cancel(session.user_id, msg.call_id, now=self._clock.monotonic())
        return None, [_Run(self, effects)]

    async def _end(self, session: Session, msg: CallEnd) -> Outcome:
        effects = self.book.hang_up(session.user_id, msg.call_id, now=self._clock.monotonic())
        return None, [_Run(self, effects)]

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

    async def end_call_anywhere(self, call_id: str, reason: EndReason, *parties: str) -> bool:
        """End a call here, or on the node of one of its ``parties`` (the node that runs it;
        a party in its grace period has no presence, so every party is tried)."""
        if await self.end_call(call_id, reason):
            return True
        records = await self._port.locate(parties)
        nodes = {r.node_id for r in records.values()} - {self._port.node_id}
        for node in nodes:
            await self._port.to_node(node, EndCall(call_id=call_id, reason=reason.value))
        return bool(nodes)

    async def _end_from_other_node(self, message: EndCall) -> None:
        await self.end_call(message.call_id, EndReason(message.reason))

    async def media_failed(self, call_id: str, party: str) -> None:
        """The SFU's watchdog: ``party``'s media never connected (or failed and was not
        renegotiated) within ``media.connect_timeout_s``. Billing stops with the call."""
        self._log.warning("call %s: media of %s failed, ending the call", call_id, party)
        await self.end_call(call_id, EndReason.MEDIA_FAILED)

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
                self._port.deliver(effect.user_id, effect.message)
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
            self._port.deliver(
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
            self._port.deliver(call.payer.user_id, warning)
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
            self._port.deliver(uid, ended)
        await self._republish(call)

    async def _republish(self, call: Call) -> None:
        if self._refresh is not None:
            for uid in call.parties():
                await self._refresh(uid)
