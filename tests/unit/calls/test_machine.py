"""The call state machine, driven by plain method calls (no sockets, no sleeping)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from signalling.auth import Identity, Role
from signalling.calls.machine import CallBook, CallState, Deliver, Ended, Started
from signalling.errors import CallError
from signalling.protocol import CallIncoming, CallRinging, EndReason, ErrorCode

ALICE = Identity("alice", Role.CALLER, "Alice")
BOB = Identity("bob", Role.HOST, "Bob")
CAROL = Identity("carol", Role.CALLER, "Carol")
DAVE = Identity("dave", Role.HOST, "Dave")


@pytest.fixture
def book() -> CallBook:
    ids = (f"c{n}" for n in itertools.count(1))
    return CallBook(ring_timeout_s=30, peer_lost_grace_s=10, new_call_id=lambda: next(ids))


def ring(book: CallBook, caller: Identity = ALICE, callee: Identity = BOB, now: float = 0) -> str:
    call, _ = book.invite(caller, callee, callee_status="available", now=now)
    return call.call_id


def ended_reason(effects: Sequence[object]) -> EndReason | None:
    for effect in effects:
        if isinstance(effect, Ended):
            return effect.call.end_reason
    return None


def test_invite_rings_both_sides(book: CallBook) -> None:
    call, effects = book.invite(ALICE, BOB, callee_status="available", now=0, record=True)
    assert call.state is CallState.RINGING
    assert [type(e) for e in effects] == [Deliver, Deliver]
    to_bob, to_alice = effects
    assert isinstance(to_bob, Deliver) and isinstance(to_alice, Deliver)
    assert to_bob.user_id == "bob" and isinstance(to_bob.message, CallIncoming)
    assert to_bob.message.caller.id == "alice" and to_bob.message.record
    assert to_alice.user_id == "alice" and isinstance(to_alice.message, CallRinging)
    assert call.payer is ALICE and call.host is BOB


def test_host_may_ring_a_caller_back_and_the_caller_still_pays(book: CallBook) -> None:
    call, _ = book.invite(BOB, ALICE, callee_status="available", now=0)
    assert call.payer is ALICE and call.host is BOB


@pytest.mark.parametrize(
    ("caller", "callee", "status", "code"),
    [
        (ALICE, ALICE, "available", ErrorCode.SELF_CALL),
        (ALICE, CAROL, "available", ErrorCode.FORBIDDEN),
        (BOB, DAVE, "available", ErrorCode.FORBIDDEN),
        (ALICE, BOB, "offline", ErrorCode.CALLEE_OFFLINE),
        (ALICE, BOB, "busy", ErrorCode.CALLEE_BUSY),
        (ALICE, BOB, "away", ErrorCode.CALLEE_AWAY),
    ],
)
def test_invite_refusals(
    book: CallBook, caller: Identity, callee: Identity, status: str, code: ErrorCode
) -> None:
    with pytest.raises(CallError) as info:
        book.invite(caller, callee, callee_status=status, now=0)
    assert info.value.code == code
    assert book.call_of(caller.user_id) is None


def test_one_call_per_user(book: CallBook) -> None:
    ring(book)
    with pytest.raises(CallError) as info:
        book.invite(ALICE, DAVE, callee_status="available", now=0)
    assert info.value.code == ErrorCode.ALREADY_IN_CALL
    with pytest.raises(CallError) as info:
        book.invite(CAROL, BOB, callee_status="available", now=0)
    assert info.value.code == ErrorCode.CALLEE_BUSY


def test_accept_starts_and_end_from_either_side_is_hangup(book: CallBook) -> None:
    cid = ring(book)
    effects = book.accept("bob", cid, now=5, record=False)
    assert [type(e) for e in effects] == [Started]
    call = book.get(cid)
    assert call is not None and call.state is CallState.ACTIVE and call.answered_at == 5
    assert ended_reason(book.hang_up("bob", cid, now=65)) is EndReason.HANGUP
    assert (call.state, call.ended_at) == (CallState.ENDED, 65)
    assert book.call_of("alice") is None and book.call_of("bob") is None
    # Both are free again.
    ring(book, now=70)


def test_only_callee_accepts_or_rejects_and_only_caller_cancels(book: CallBook) -> None:
    cid = ring(book)
    actions: list[Callable[[], object]] = [
        lambda: book.accept("alice", cid, now=1, record=False),
        lambda: book.reject("alice", cid, now=1),
        lambda: book.cancel("bob", cid, now=1),
    ]
    for action in actions:
        with pytest.raises(CallError) as info:
            action()
        assert info.value.code == ErrorCode.FORBIDDEN
    assert ended_reason(book.reject("bob", cid, now=2)) is EndReason.REJECTED


def test_hang_up_while_ringing_is_cancel_or_reject(book: CallBook) -> None:
    assert ended_reason(book.hang_up("alice", ring(book), now=1)) is EndReason.CANCELLED
    assert ended_reason(book.hang_up("bob", ring(book), now=2)) is EndReason.REJECTED


def test_cancel_vs_accept_race_first_wins(book: CallBook) -> None:
    cid = ring(book)
    assert ended_reason(book.cancel("alice", cid, now=1)) is EndReason.CANCELLED
    with pytest.raises(CallError) as info:
        book.accept("bob", cid, now=1, record=False)
    assert info.value.code == ErrorCode.CALL_NOT_FOUND

    cid = ring(book, now=2)
    book.accept("bob", cid, now=3, record=False)
    with pytest.raises(CallError) as info:
        book.cancel("alice", cid, now=3)
    assert info.value.code == ErrorCode.INVALID_STATE
    assert "active" in info.value.message


def test_strangers_cannot_touch_a_call(book: CallBook) -> None:
    cid = ring(book)
    actions: list[Callable[[], object]] = [
        lambda: book.accept("carol", cid, now=1, record=False),
        lambda: book.hang_up("carol", cid, now=1),
        lambda: book.require_active("carol", cid),
        lambda: book.hang_up("alice", "no-such-call", now=1),
    ]
    for action in actions:
        with pytest.raises(CallError) as info:
            action()
        assert info.value.code == ErrorCode.CALL_NOT_FOUND


def test_ring_timeout(book: CallBook) -> None:
    cid = ring(book, now=0)
    assert book.next_deadline() == 30
    assert book.expire(29.9) == []
    assert ended_reason(book.expire(30)) is EndReason.TIMEOUT
    assert book.get(cid) is None


def test_ring_timer_of_an_answered_call_does_nothing(book: CallBook) -> None:
    cid = ring(book, now=0)
    book.accept("bob", cid, now=1, record=False)
    assert book.expire(100) == []
    call = book.get(cid)
    assert call is not None and call.state is CallState.ACTIVE


def test_peer_lost_after_grace_unless_back(book: CallBook) -> None:
    cid = ring(book)
    book.accept("bob", cid, now=1, record=False)
    assert book.party_lost("alice", now=10) == []
    assert book.expire(19.9) == []
    assert book.party_back("alice") is book.get(cid)
    assert book.expire(21) == []  # the cancelled timer does not fire

    book.party_lost("bob", now=30)
    book.party_lost("bob", now=35)  # a second loss re-arms from the later time
    assert book.expire(40) == []
    assert ended_reason(book.expire(45)) is EndReason.PEER_LOST


def test_zero_grace_ends_at_once(book: CallBook) -> None:
    zero = CallBook(ring_timeout_s=30, peer_lost_grace_s=0)
    call, _ = zero.invite(ALICE, BOB, callee_status="available", now=0)
    zero.accept("bob", call.call_id, now=1, record=False)
    assert ended_reason(zero.party_lost("bob", now=2)) is EndReason.PEER_LOST


def test_end_from_outside_is_idempotent(book: CallBook) -> None:
    cid = ring(book)
    book.accept("bob", cid, now=1, record=False)
    assert ended_reason(book.end(cid, EndReason.INSUFFICIENT_BALANCE, now=61)) is (
        EndReason.INSUFFICIENT_BALANCE
    )
    assert book.end(cid, EndReason.ADMIN, now=62) == []
    assert book.end("unknown", EndReason.ADMIN, now=62) == []


def test_recording_needs_both_sides(book: CallBook) -> None:
    call, _ = book.invite(ALICE, BOB, callee_status="available", now=0, record=True)
    book.accept("bob", call.call_id, now=1, record=False)
    assert not call.record
    other = CallBook(ring_timeout_s=30, peer_lost_grace_s=10)
    call2, _ = other.invite(ALICE, BOB, callee_status="available", now=0, record=True)
    other.accept("bob", call2.call_id, now=1, record=True)
    assert call2.record
