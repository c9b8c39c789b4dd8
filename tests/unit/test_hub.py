"""The hub driven without sockets: sessions are plain objects whose queues we read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from signalling.app import assemble
from signalling.auth import Identity, Role
from signalling.calls.hooks import CallRefused, EndFigures, FreeCalls, StartTerms
from signalling.calls.machine import Call
from signalling.clock import ManualClock
from signalling.cluster.resume import MemoryResume
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.presence.store import PresenceRecord
from signalling.protocol import CloseCode, EndReason, Error
from signalling.session import Session
from signalling.settings import HubSettings

ALICE = Identity("alice", Role.CALLER, "Alice")
BOB = Identity("bob", Role.HOST, "Bob")


class RecordingHooks(FreeCalls):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[tuple[str, str | None]] = []
        self.refuse = False

    async def call_started(self, call: Call) -> StartTerms:
        if self.refuse:
            raise CallRefused("no money", EndReason.INSUFFICIENT_BALANCE)
        self.started.append(call.call_id)
        return StartTerms(rate=10, balance=95)

    async def call_ended(self, call: Call) -> EndFigures:
        self.ended.append((call.call_id, call.end_reason))
        return EndFigures(minutes=2, coins=20)


class Env:
    def __init__(self, **hub: Any) -> None:
        self.clock = ManualClock()
        self.world = MemoryWorld(self.clock)
        self.presence = MemoryPresence(self.world, "n1", ttl_s=15, node_ttl_s=10)
        self.hooks = RecordingHooks()
        wings = assemble(HubSettings(**hub), self.presence, clock=self.clock, hooks=self.hooks)
        self.hub, self.calls = wings.hub, wings.calls

    async def send(self, session: Session, **msg: Any) -> None:
        await self.hub.handle_frame(session, msgspec.json.encode(msg).decode())


def frames(session: Session) -> list[dict[str, Any]]:
    return [msgspec.json.decode(f) for f in session.take()]


def of_type(session: Session, kind: str) -> list[dict[str, Any]]:
    return [f for f in frames(session) if f["type"] == kind]


@pytest.fixture
def env() -> Env:
    return Env()


async def test_welcome_first_and_presence_set(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    welcome = frames(alice)[0]
    assert welcome["type"] == "welcome" and welcome["user"] == {
        "id": "alice",
        "role": "caller",
        "name": "Alice",
    }
    assert welcome["media"] == "p2p" and welcome["ice_servers"] == []
    assert "alice" in await env.presence.get_many(["alice"])


async def test_watch_sees_changes_and_offline(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    await env.send(alice, type="presence.watch", id="w", user_ids=["bob"])
    assert frames(alice)[-1] == {"type": "ack", "id": "w", "presence": {"bob": "offline"}}
    bob = await env.hub.connect(BOB)
    await env.send(bob, type="presence.update", id="u", status="away")
    changes = [f["status"] for f in frames(alice) if f["type"] == "presence.changed"]
    assert changes == ["available", "away"]
    await env.hub.disconnect(bob)
    assert of_type(alice, "presence.changed") == [
        {"type": "presence.changed", "user_id": "bob", "status": "offline"}
    ]
    await env.send(alice, type="presence.unwatch", user_ids=["bob"])
    await env.hub.connect(BOB)
    assert of_type(alice, "presence.changed") == []


async def test_full_call_with_hooks_and_busy_presence(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="presence.watch", user_ids=["bob"])
    frames(alice), frames(bob)
    await env.send(alice, type="call.invite", id="1", to="bob")
    out = frames(alice)
    ack = next(f for f in out if f["type"] == "ack")
    cid = ack["call_id"]
    assert {
        "type": "call.ringing",
        "call_id": cid,
        "callee": {"id": "bob", "role": "host", "name": "Bob"},
    } in out
    assert {"type": "presence.changed", "user_id": "bob", "status": "busy"} in out
    assert of_type(bob, "call.incoming")[0]["caller"]["id"] == "alice"

    await env.send(bob, type="call.accept", id="2", call_id=cid)
    started = of_type(alice, "call.started")[0]
    assert started["rate"] == 10 and started["balance"] == 95 and started["peer"]["id"] == "bob"
    bob_started = of_type(bob, "call.started")[0]
    assert "balance" not in bob_started  # only the payer sees their balance

    await env.send(alice, type="rtc.offer", call_id=cid, sdp="v=0 offer")
    await env.send(bob, type="rtc.answer", call_id=cid, sdp="v=0 answer")
    await env.send(
        bob, type="rtc.ice", call_id=cid, candidate="candidate:1", sdp_mid="0", sdp_mline_index=0
    )
    assert of_type(bob, "rtc.offer") == [
        {"type": "rtc.offer", "call_id": cid, "from": "alice", "sdp": "v=0 offer"}
    ]
    alice_in = frames(alice)
    assert [f["type"] for f in alice_in] == ["rtc.answer", "rtc.ice"]
    assert alice_in[1]["candidate"] == "candidate:1" and alice_in[1]["from"] == "bob"

    await env.send(bob, type="call.end", id="3", call_id=cid)
    for s in (alice, bob):
        ended = of_type(s, "call.ended")
        assert ended == [
            {"type": "call.ended", "call_id": cid, "reason": "hangup", "minutes": 2, "coins": 20}
        ]
    assert env.hooks.ended == [(cid, "hangup")]
    assert (await env.presence.get_many(["bob"]))["bob"].status == "available"


async def test_refused_start_ends_with_reason(env: Env) -> None:
    env.hooks.refuse = True
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", call_id=cid)
    for s in (alice, bob):
        out = frames(s)
        assert not [f for f in out if f["type"] == "call.started"]
        assert [f["reason"] for f in out if f["type"] == "call.ended"] == ["insufficient_balance"]


async def test_relay_refused_outside_an_active_call(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(alice, type="rtc.offer", id="2", call_id=cid, sdp="x")
    assert of_type(alice, "error") == [
        {
            "type": "error",
            "id": "2",
            "code": "invalid_state",
            "message": f"call {cid} is ringing, not active",
        }
    ]
    carol = await env.hub.connect(Identity("carol", Role.CALLER, "Carol"))
    await env.send(carol, type="rtc.ice", id="3", call_id=cid, candidate="x")
    await env.send(carol, type="call.end", id="4", call_id=cid)
    assert [(f["id"], f["code"]) for f in of_type(carol, "error")] == [
        ("3", "call_not_found"),
        ("4", "call_not_found"),
    ]
    assert of_type(bob, "rtc.ice") == []


async def test_ring_timeout_via_tick(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", to="bob")
    env.clock.advance(29)
    await env.calls.tick()
    assert of_type(bob, "call.ended") == []
    env.clock.advance(2)
    await env.calls.tick()
    assert [f["reason"] for f in of_type(bob, "call.ended")] == ["timeout"]
    assert [f["reason"] for f in of_type(alice, "call.ended")] == ["timeout"]


async def test_disconnect_then_peer_lost_or_resume(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", call_id=cid)
    await env.hub.disconnect(alice)
    env.clock.advance(10)
    await env.calls.tick()
    alice2 = await env.hub.connect(ALICE)
    welcome = frames(alice2)[0]
    assert welcome["call"] == {
        "call_id": cid,
        "state": "active",
        "peer": {"id": "bob", "role": "host", "name": "Bob"},
        "role": "caller",
    }
    env.clock.advance(60)
    await env.calls.tick()
    assert of_type(bob, "call.ended") == []

    await env.hub.disconnect(bob)
    env.clock.advance(15)
    await env.calls.tick()
    assert [f["reason"] for f in of_type(alice2, "call.ended")] == ["peer_lost"]


async def test_new_session_replaces_old(env: Env) -> None:
    old = await env.hub.connect(ALICE)
    new = await env.hub.connect(ALICE)
    assert old.close_code is CloseCode.REPLACED
    await env.hub.disconnect(old)  # the old socket's late cleanup
    assert env.hub.sessions["alice"] is new
    assert "alice" in await env.presence.get_many(["alice"])


async def test_bad_frames_get_errors_and_session_goes_on(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    frames(alice)
    bad: list[str | bytes] = [
        "{not json",
        '{"type": "nope", "id": "a"}',
        '{"type": "call.invite", "id": "b", "to": 42}',
        '{"type": "presence.update", "id": "c", "status": "dancing"}',
        '{"type": "presence.update", "id": "d", "status": "away",'
        ' "location": {"lat": 91, "lon": 0}}',
        '{"type": "call.accept", "id": "e"}',
        b'{"type": "presence.update"}',
        '{"type": "presence.watch", "id": "f", "user_ids": ["bad id with spaces"]}',
        "[1,2]",
        '{"type": "rtc.offer", "id": "g", "call_id": "c", "sdp": "' + "x" * 70000 + '"}',
    ]
    for frame in bad:
        await env.hub.handle_frame(alice, frame)
    errors = [(f.get("id"), f["code"]) for f in frames(alice)]
    assert errors == [
        (None, "bad_json"),
        ("a", "unknown_type"),
        ("b", "invalid_message"),
        ("c", "invalid_message"),
        ("d", "invalid_message"),
        ("e", "invalid_message"),
        (None, "binary_not_supported"),
        ("f", "invalid_message"),
        (None, "bad_json"),
        ("g", "frame_too_large"),  # the id is read even from a frame that is not handled
    ]
    await env.send(alice, type="presence.update", id="ok", status="away")
    assert frames(alice) == [{"type": "ack", "id": "ok"}]
    assert not alice.closing


async def test_rate_limit_then_flood_close() -> None:
    env = Env(rate_per_s=1, rate_burst=3, flood_close_after=5)
    alice = await env.hub.connect(ALICE)
    frames(alice)
    for n in range(3):
        await env.send(alice, type="presence.update", id=str(n), status="available")
    await env.send(alice, type="presence.update", id="x", status="available")
    out = frames(alice)
    assert [f["type"] for f in out] == ["ack", "ack", "ack", "error"]
    assert out[-1] == {"type": "error", "id": "x", "code": "rate_limited", "message": "slow down"}
    env.clock.advance(1)  # one token back
    await env.send(alice, type="presence.update", id="y", status="available")
    assert frames(alice) == [{"type": "ack", "id": "y"}]
    for _ in range(5):
        await env.send(alice, type="presence.update", status="available")
    assert alice.close_code is CloseCode.POLICY


async def test_slow_consumer_is_closed_not_buffered() -> None:
    env = Env(send_queue_max=8)
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="presence.watch", user_ids=["bob"])
    aborted = []
    alice.on_abort = lambda: aborted.append(True)
    for n in range(20):
        await env.send(bob, type="presence.update", status="away" if n % 2 else "available")
    assert alice.close_code is CloseCode.POLICY and aborted == [True]
    assert alice.take() == []  # nothing kept for a dead consumer
    assert not bob.closing


async def test_slow_consumer_is_bounded_in_bytes_not_only_frames() -> None:
    """A client asking for large replies and not reading: the probe saw 512 frames of
    ~700 KiB queued for one connection. The queue is bounded in bytes too."""
    env = Env(send_queue_max=512, send_queue_max_bytes=65536)
    alice = await env.hub.connect(ALICE)
    frames(alice)
    aborted = []
    alice.on_abort = lambda: aborted.append(True)
    big = b'{"type":"chat.message","text":"' + b"x" * 30_000 + b'"}'
    alice.send_frame(big)  # an empty queue takes one frame of any size...
    alice.send_frame(big)
    assert alice.queued_bytes == 2 * len(big) and not alice.closing
    alice.send_frame(big)  # ...but not a third: 90 KB > 64 KiB
    assert alice.close_code is CloseCode.POLICY and alice.aborted and aborted == [True]
    assert alice.queued_bytes == 0 and alice.take() == []


async def test_one_large_reply_reaches_a_client_that_keeps_up() -> None:
    env = Env(send_queue_max_bytes=65536)
    alice = await env.hub.connect(ALICE)
    frames(alice)
    huge = b"x" * 200_000
    alice.send_frame(huge)
    assert alice.pop() == huge and alice.pop() is None
    alice.send_frame(huge)
    assert not alice.closing and alice.queued_bytes == len(huge)


async def test_watch_limit() -> None:
    env = Env(presence_watch_max=2)
    alice = await env.hub.connect(ALICE)
    await env.send(alice, type="presence.watch", id="1", user_ids=["a", "b", "c"])
    assert of_type(alice, "error")[0]["code"] == "too_many_watches"


async def test_store_failure_is_an_error_not_a_crash(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    frames(alice)

    async def broken(*_: object) -> None:
        raise ConnectionError("redis went away")

    env.presence.set = broken  # type: ignore[method-assign,assignment]
    await env.send(alice, type="presence.update", id="1", status="away")
    assert frames(alice) == [
        {"type": "error", "id": "1", "code": "unavailable", "message": "try again shortly"}
    ]
    assert not alice.closing


async def test_shutdown_ends_calls_and_closes_with_restart(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", call_id=cid)
    await env.calls.shutdown()
    await env.hub.shutdown()
    assert [f["reason"] for f in of_type(alice, "call.ended")] == ["shutdown"]
    assert alice.close_code is CloseCode.SERVICE_RESTART
    assert bob.close_code is CloseCode.SERVICE_RESTART


async def test_end_call_from_outside(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", call_id=cid)
    assert await env.calls.end_call(cid, EndReason.INSUFFICIENT_BALANCE)
    assert not await env.calls.end_call(cid, EndReason.ADMIN)
    assert [f["reason"] for f in of_type(bob, "call.ended")] == ["insufficient_balance"]


async def test_broken_billing_hook_ends_the_call_not_the_session(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)

    async def broken(call: Call) -> StartTerms:
        raise RuntimeError("database went away")

    env.hooks.call_started = broken  # type: ignore[method-assign]
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", id="2", call_id=cid)
    out = frames(bob)
    assert {"type": "ack", "id": "2"} in out
    assert [f["reason"] for f in out if f["type"] == "call.ended"] == ["cancelled"]
    assert env.calls.book.call_of("alice") is None and not bob.closing


@pytest.mark.parametrize("step", ["claim", "set"])
async def test_connect_with_store_down_leaves_no_session(env: Env, step: str) -> None:
    async def broken(*_: object) -> None:
        raise ConnectionError("redis went away")

    setattr(env.presence, step, broken)  # the claim, or the publish after the welcome
    with pytest.raises(ConnectionError):
        await env.hub.connect(ALICE)
    assert "alice" not in env.hub.sessions
    assert await env.presence.get_many(["alice"]) == {}  # nor a claimed record


async def test_reconnect_hitting_a_store_failure_keeps_the_grace_timer(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    await env.send(alice, type="call.invite", id="1", to="bob")
    cid = of_type(alice, "ack")[0]["call_id"]
    await env.send(bob, type="call.accept", call_id=cid)
    await env.hub.disconnect(alice)
    real_set = env.presence.set

    async def broken(*_: object) -> None:
        raise ConnectionError("redis went away")

    env.presence.set = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(ConnectionError):
        await env.hub.connect(ALICE)  # came back, but could not be registered
    env.presence.set = real_set  # type: ignore[method-assign]
    env.clock.advance(16)
    await env.calls.tick()
    assert [f["reason"] for f in of_type(bob, "call.ended")] == ["peer_lost"]
    assert env.hooks.ended == [(cid, "peer_lost")]


async def test_an_old_sessions_disconnect_does_not_announce_a_user_online_elsewhere() -> None:
    env = Env()
    other_node = MemoryPresence(env.world, "n2", ttl_s=15, node_ttl_s=10)
    hub2 = assemble(HubSettings(), other_node, clock=env.clock, hooks=FreeCalls()).hub
    bob = await env.hub.connect(BOB)
    await env.send(bob, type="presence.watch", user_ids=["alice"])
    old = await env.hub.connect(ALICE)
    frames(bob)
    await hub2.connect(ALICE)  # alice moved to node n2 before n1 heard of it
    await env.hub.disconnect(old)  # her old socket on n1 drops
    assert of_type(bob, "presence.changed") == []
    assert "alice" in await env.presence.get_many(["alice"])


async def test_two_racing_connects_leave_the_newer_sessions_record() -> None:
    env = Env()
    real_set = env.presence.set
    first_may_finish = asyncio.Event()
    calls = 0

    async def slow_first(record: PresenceRecord) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first connect's write lands last
            await first_may_finish.wait()
        return await real_set(record)

    env.presence.set = slow_first  # type: ignore[method-assign]
    first = asyncio.create_task(env.hub.connect(ALICE))
    await asyncio.sleep(0)
    second = await env.hub.connect(ALICE)
    first_may_finish.set()
    older = await first
    assert older.close_code is CloseCode.REPLACED
    record = (await env.presence.get_many(["alice"]))["alice"]
    assert record.session_id == second.session_id


class SlowResume(MemoryResume):
    """A resume store whose ``park`` waits for the test to let it finish."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, window_s=120, max_frames=64)
        self.release = asyncio.Event()

    async def park(self, token: str, user_id: str, first_seq: int, frames: Sequence[bytes]) -> None:
        await self.release.wait()
        await super().park(token, user_id, first_seq, frames)


async def test_a_session_replaced_while_it_is_being_parked_stays_replaced() -> None:
    clock = ManualClock()
    presence = MemoryPresence(MemoryWorld(clock), "n1", ttl_s=15, node_ttl_s=10)
    store = SlowResume(clock)
    wings = assemble(HubSettings(), presence, clock=clock, hooks=FreeCalls(), resume=store)
    hub = wings.hub
    watcher = await hub.connect(BOB)
    await env_send(hub, watcher, type="presence.watch", id="w", user_ids=["alice"])
    old = await hub.connect(ALICE)
    parking = asyncio.create_task(hub.disconnect(old, resumable=True))
    await asyncio.sleep(0)  # the parking waits on the store
    new = await hub.connect(ALICE)  # the app reconnects first, without resuming
    store.release.set()
    await parking
    assert hub.parking is not None and hub.parking.get("alice") is None
    record = (await presence.get_many(["alice"]))["alice"]
    assert (record.session_id, record.status) == (new.session_id, "available")
    # Frames for alice reach the new session, not the one that was being parked.
    hub.deliver("alice", Error(code="x", message="to the new one"))
    assert of_type(new, "error")[-1]["message"] == "to the new one"


async def env_send(hub: Any, session: Session, **msg: Any) -> None:
    await hub.handle_frame(session, msgspec.json.encode(msg).decode())
