"""The call lifecycle as a state machine with no I/O (docs/protocol.md §5).

The calls wing feeds it user actions, disconnects and the passing of time; it answers with effects
(frames to deliver, and Started / Ended for the billing hooks). Every state change goes
through ``Call._transition``; an illegal one raises CallError naming the current state.
"""

from __future__ import annotations

import enum
import heapq
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth import Identity, Role, user_info
from ..errors import CallError
from ..protocol import (
    CallIncoming,
    CallRinging,
    EndReason,
    ErrorCode,
    ServerMessage,
)

log = logging.getLogger(__name__)


class CallState(enum.StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


_ALLOWED = {
    CallState.RINGING: {CallState.ACTIVE, CallState.ENDED},
    CallState.ACTIVE: {CallState.ENDED},
    CallState.ENDED: set[CallState](),
}


def payer_and_host(a: Identity, b: Identity) -> tuple[Identity, Identity]:
    """The party who pays is the one with role caller (a host may ring a caller back)."""
    return (a, b) if a.role is Role.CALLER else (b, a)


@dataclass(eq=False)
class Call:
    call_id: str
    caller: Identity
    callee: Identity
    created_at: float
    record_requested: bool = False
    record_consent: bool = False
    match: bool = False  # made by matchmaking (§10), not a direct invite
    state: CallState = CallState.RINGING
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None

    @property
    def payer(self) -> Identity:
        return payer_and_host(self.caller, self.callee)[0]

    @property
    def host(self) -> Identity:
        return payer_and_host(self.caller, self.callee)[1]

    @property
    def record(self) -> bool:
        return self.record_requested and self.record_consent

    def parties(self) -> tuple[str, str]:
        return (self.caller.user_id, self.callee.user_id)

    def party(self, user_id: str) -> Identity:
        return self.caller if user_id == self.caller.user_id else self.callee

    def peer_of(self, user_id: str) -> Identity:
        return self.callee if user_id == self.caller.user_id else self.caller

    def _transition(self, new: CallState) -> None:
        if new not in _ALLOWED[self.state]:
            raise CallError(
                f"call {self.call_id} is {self.state}, cannot become {new}",
                code=ErrorCode.INVALID_STATE,
            )
        log.debug("call %s: %s -> %s", self.call_id, self.state, new)
        self.state = new


@dataclass(frozen=True, slots=True)
class Deliver:
    user_id: str
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class Started:
    call: Call


@dataclass(frozen=True, slots=True)
class Ended:
    call: Call


Effect = Deliver | Started | Ended


@dataclass(order=True)
class _Timer:
    deadline: float
    kind: str = field(compare=False)  # "ring" or "lost"
    key: str = field(compare=False)  # call id for ring, user id for lost
    token: int = field(compare=False)


def _new_call_id() -> str:
    return "c_" + secrets.token_urlsafe(12)


class CallBook:
    """All calls of one hub. A user is in at most one unfinished call at a time."""

    def __init__(
        self,
        *,
        ring_timeout_s: float,
        peer_lost_grace_s: float,
        new_call_id: Callable[[], str] = _new_call_id,
        on_new_deadline: Callable[[], None] = lambda: None,
    ) -> None:
        self._ring_timeout = ring_timeout_s
        self._grace = peer_lost_grace_s
        self._new_id = new_call_id
        # Told when a timer becomes the earliest, so the timer task sleeps until it.
        self._on_new_deadline = on_new_deadline
        self._calls: dict[str, Call] = {}
        self._by_user: dict[str, Call] = {}
        self._lost: dict[str, int] = {}  # user id -> token of the live "lost" timer
        self._timers: list[_Timer] = []
        self._seq = 0

    # --- queries ------------------------------------------------------------------------

    def call_of(self, user_id: str) -> Call | None:
        return self._by_user.get(user_id)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def for_party(self, user_id: str, call_id: str) -> Call:
        """The call, if ``user_id`` is in it; the same error otherwise, so ids don't leak."""
        call = self._calls.get(call_id)
        if call is None or user_id not in call.parties():
            raise CallError(f"no call {call_id!r} of yours", code=ErrorCode.CALL_NOT_FOUND)
        return call

    def active_calls(self) -> list[Call]:
        return list(self._calls.values())

    def is_lost(self, user_id: str) -> bool:
        return user_id in self._lost

    # --- user actions -------------------------------------------------------------------

    def invite(
        self,
        caller: Identity,
        callee: Identity,
        *,
        callee_status: str,
        now: float,
        record: bool = False,
        match: bool = False,
    ) -> tuple[Call, list[Effect]]:
        """``callee_status`` is the callee's shown presence (offline when not connected)."""
        self.check_invite(caller, callee, callee_status=callee_status)
        call = Call(
            call_id=self._new_id(),
            caller=caller,
            callee=callee,
            created_at=now,
            record_requested=record,
            match=match,
        )
        self._calls[call.call_id] = call
        self._by_user[caller.user_id] = call
        self._by_user[callee.user_id] = call
        self._schedule(now + self._ring_timeout, "ring", call.call_id)
        return call, [
            Deliver(
                callee.user_id,
                CallIncoming(
                    call_id=call.call_id, caller=user_info(caller), record=record, match=match
                ),
            ),
            Deliver(caller.user_id, CallRinging(call_id=call.call_id, callee=user_info(callee))),
        ]

    def withdraw(self, call_id: str) -> None:
        """Forget a call just invited, before anyone heard of it (another node holds one of
        the parties). Its ring timer finds nothing when it fires."""
        call = self._calls.pop(call_id, None)
        if call is not None:
            for uid in call.parties():
                if self._by_user.get(uid) is call:
                    del self._by_user[uid]

    def check_invite(self, caller: Identity, callee: Identity, *, callee_status: str) -> None:
        """Raise the CallError an invite would raise now; nothing changes."""
        if caller.user_id == callee.user_id:
            raise CallError("you cannot call yourself", code=ErrorCode.SELF_CALL)
        if {caller.role, callee.role} != {Role.CALLER, Role.HOST}:
            raise CallError("a call is between a caller and a host", code=ErrorCode.FORBIDDEN)
        if caller.user_id in self._by_user:
            raise CallError("you are already in a call", code=ErrorCode.ALREADY_IN_CALL)
        if callee_status == "offline":
            raise CallError(f"{callee.user_id} is offline", code=ErrorCode.CALLEE_OFFLINE)
        if callee.user_id in self._by_user or callee_status == "busy":
            raise CallError(f"{callee.user_id} is busy", code=ErrorCode.CALLEE_BUSY)
        if callee_status == "away":
            raise CallError(f"{callee.user_id} is away", code=ErrorCode.CALLEE_AWAY)

    def accept(self, user_id: str, call_id: str, *, now: float, record: bool) -> list[Effect]:
        call = self.for_party(user_id, call_id)
        if user_id != call.callee.user_id:
            raise CallError("only the callee can accept", code=ErrorCode.FORBIDDEN)
        call._transition(CallState.ACTIVE)
        call.answered_at = now
        call.record_consent = record
        return [Started(call)]

    def reject(self, user_id: str, call_id: str, *, now: float) -> list[Effect]:
        call = self.for_party(user_id, call_id)
        if user_id != call.callee.user_id:
            raise CallError("only the callee can reject; use call.cancel", code=ErrorCode.FORBIDDEN)
        self._require(call, CallState.RINGING)
        return self._end(call, EndReason.REJECTED, now)

    def cancel(self, user_id: str, call_id: str, *, now: float) -> list[Effect]:
        call = self.for_party(user_id, call_id)
        if user_id != call.caller.user_id:
            raise CallError("only the caller can cancel; use call.reject", code=ErrorCode.FORBIDDEN)
        self._require(call, CallState.RINGING)
        return self._end(call, EndReason.CANCELLED, now)

    def hang_up(self, user_id: str, call_id: str, *, now: float) -> list[Effect]:
        call = self.for_party(user_id, call_id)
        if call.state is CallState.RINGING:
            caller = user_id == call.caller.user_id
            return self._end(call, EndReason.CANCELLED if caller else EndReason.REJECTED, now)
        return self._end(call, EndReason.HANGUP, now)

    def require_active(self, user_id: str, call_id: str) -> Call:
        call = self.for_party(user_id, call_id)
        self._require(call, CallState.ACTIVE)
        return call

    # --- from outside (billing, admin, shutdown) ----------------------------------------

    def end(self, call_id: str, reason: EndReason, *, now: float) -> list[Effect]:
        """End a call for an outside reason. Ending an ended or unknown call does nothing."""
        call = self._calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            return []
        return self._end(call, reason, now)

    # --- connection changes and time ----------------------------------------------------

    def party_lost(self, user_id: str, *, now: float) -> list[Effect]:
        """The user's last connection went away: their call ends after the grace period."""
        call = self._by_user.get(user_id)
        if call is None:
            return []
        if self._grace <= 0:
            return self._end(call, EndReason.PEER_LOST, now)
        self._lost[user_id] = self._schedule(now + self._grace, "lost", user_id)
        return []

    def party_back(self, user_id: str) -> Call | None:
        """The user reconnected in time: keep their call. Returns it, if any."""
        self._lost.pop(user_id, None)
        return self._by_user.get(user_id)

    def next_deadline(self) -> float | None:
        return self._timers[0].deadline if self._timers else None

    def expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            if timer.kind == "ring":
                call = self._calls.get(timer.key)
                if call is not None and call.state is CallState.RINGING:
                    effects += self._end(call, EndReason.TIMEOUT, now)
            elif self._lost.get(timer.key) == timer.token:
                del self._lost[timer.key]
                call = self._by_user.get(timer.key)
                if call is not None:
                    effects += self._end(call, EndReason.PEER_LOST, now)
        return effects

    # --- internals ----------------------------------------------------------------------

    def _require(self, call: Call, state: CallState) -> None:
        if call.state is not state:
            raise CallError(
                f"call {call.call_id} is {call.state}, not {state}", code=ErrorCode.INVALID_STATE
            )

    def _end(self, call: Call, reason: EndReason, now: float) -> list[Effect]:
        call._transition(CallState.ENDED)
        call.ended_at = now
        call.end_reason = reason
        del self._calls[call.call_id]
        for uid in call.parties():
            if self._by_user.get(uid) is call:
                del self._by_user[uid]
                self._lost.pop(uid, None)
        return [Ended(call)]

    def _schedule(self, deadline: float, kind: str, key: str) -> int:
        self._seq += 1
        heapq.heappush(self._timers, _Timer(deadline, kind, key, self._seq))
        if self._timers[0].token == self._seq:
            self._on_new_deadline()
        return self._seq
