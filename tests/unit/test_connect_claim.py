"""One live session per user when connects race on two nodes (hub.connect's claim).

Two hubs share a MemoryWorld and a node bus that hands each message to the other hub's
inbox at once. A connect on one node is held at a chosen step while the same user connects
on the other; tests/integration/test_connect_race.py races real ones on Redis.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from signalling.app import assemble
from signalling.auth import Identity, Role
from signalling.calls.directory import CallEntry, MemoryCallDirectory
from signalling.calls.hooks import FreeCalls
from signalling.calls.service import Calls as CallsWing
from signalling.clock import ManualClock
from signalling.cluster.bus import CloseSession, NodeMessage
from signalling.hub import Hub
from signalling.port import Departure
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.presence.service import Presence
from signalling.presence.store import PresenceRecord
from signalling.protocol import CloseCode, Welcome
from signalling.session import Session
from signalling.settings import HubSettings

ALICE = Identity("alice", Role.CALLER, "Alice")
BOB = Identity("bob", Role.HOST, "Bob")
Inbox = Callable[[NodeMessage], Awaitable[None]]


class Wire:
    """The node bus between the hubs of one test."""

    def __init__(self) -> None:
        self.inboxes: dict[str, Inbox] = {}
        self.lost: set[type[NodeMessage]] = set()  # kinds dropped (the bus is at-most-once)

    def router(self, node_id: str) -> WireRouter:
        return WireRouter(self, node_id)


class WireRouter:
    def __init__(self, wire: Wire, node_id: str) -> None:
        self._wire, self._node = wire, node_id

    async def start(self, inbox: Inbox) -> None:
        self._wire.inboxes[self._node] = inbox

    async def to_node(self, node_id: str, message: NodeMessage) -> None:
        if type(message) not in self._wire.lost:
            await self._wire.inboxes[node_id](message)

    async def broadcast(self, message: NodeMessage) -> None:
        for node_id, inbox in self._wire.inboxes.items():
            if node_id != self._node:
                await inbox(message)

    async def close(self) -> None:
        return None


class Nodes:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.world = MemoryWorld(self.clock)
        self.wire = Wire()
        self.stores: dict[str, MemoryPresence] = {}
        self.hubs: dict[str, Hub] = {}
        self.calls: dict[str, CallsWing] = {}
        self.presence: dict[str, Presence] = {}
        self.directory = MemoryCallDirectory(self.clock, ttl_s=math.inf)
        for node in ("n1", "n2"):
            store = MemoryPresence(self.world, node, ttl_s=15, node_ttl_s=10)
            router = self.wire.router(node)
            wings = assemble(
                HubSettings(),
                store,
                self.directory,
                clock=self.clock,
                hooks=FreeCalls(),
                router=router,
            )
            self.stores[node], self.hubs[node] = store, wings.hub
            self.calls[node], self.presence[node] = wings.calls, wings.presence

    async def start(self) -> None:
        for hub in self.hubs.values():
            await hub.start_routing()

    def record(self, user_id: str) -> PresenceRecord | None:
        return self.world.live(user_id)

    def where(self, user_id: str) -> tuple[str, str, str] | None:
        """(node, session, status) of the user's live record."""
        record = self.world.live(user_id)
        return None if record is None else (record.node_id, record.session_id, record.status)

    async def overtaken_while_joining(self) -> tuple[asyncio.Task[Session], Session, asyncio.Event]:
        """ALICE's connect on n1 held in its welcome (after its claim) while she connects
        on n2: (n1's connect, n2's session, the event that lets n1's connect go on)."""
        in_welcome, release = asyncio.Event(), asyncio.Event()

        async def slow_part(session: Session, welcome: Welcome) -> Welcome:
            if session.identity == ALICE:
                in_welcome.set()
                await release.wait()  # e.g. the calls wing reading the call directory
            return welcome

        self.hubs["n1"].on_welcome(slow_part)
        first = asyncio.create_task(self.hubs["n1"].connect(ALICE))
        await in_welcome.wait()
        second = await self.hubs["n2"].connect(ALICE)  # sees n1's claim: closes that session
        await settle()
        return first, second, release


def frames(session: Session) -> list[dict[str, Any]]:
    return [msgspec.json.decode(frame) for frame in session.take()]


async def settle() -> None:
    """Let the node bus's lane tasks run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_connect_overtaken_during_its_claim_closes_before_any_welcome() -> None:
    nodes = Nodes()
    await nodes.start()
    store = nodes.stores["n1"]
    real_claim = store.claim
    claimed, release = asyncio.Event(), asyncio.Event()

    async def slow_claim(
        user_id: str, session_id: str, role: str, name: str
    ) -> PresenceRecord | None:
        took = await real_claim(user_id, session_id, role, name)
        claimed.set()
        await release.wait()  # the reply is slow to come back
        return took

    store.claim = slow_claim  # type: ignore[method-assign]
    first = asyncio.create_task(nodes.hubs["n1"].connect(ALICE))
    await claimed.wait()
    second = await nodes.hubs["n2"].connect(ALICE)  # sees n1's claim: closes that session
    await settle()
    release.set()
    older = await first

    assert older.close_code is CloseCode.REPLACED
    assert "welcome" not in [f["type"] for f in frames(older)]
    assert "alice" not in nodes.hubs["n1"].sessions
    assert nodes.hubs["n2"].sessions["alice"] is second
    assert nodes.where("alice") == ("n2", second.session_id, "available")


async def test_a_connect_overtaken_while_joining_leaves_the_newer_one_the_user() -> None:
    nodes = Nodes()
    await nodes.start()
    watcher = await nodes.hubs["n2"].connect(BOB)
    await nodes.hubs["n2"].handle_frame(
        watcher, '{"type": "presence.watch", "id": "w", "user_ids": ["alice"]}'
    )
    first, second, release = await nodes.overtaken_while_joining()
    assert first.done() is False  # still joining: closed, and left when it gets there
    release.set()
    older = await first
    await settle()

    assert older.close_code is CloseCode.REPLACED
    assert "alice" not in nodes.hubs["n1"].sessions
    record = nodes.record("alice")
    assert record is not None and record.session_id == second.session_id
    # The watcher saw alice come online once, and never go offline.
    changes = [f for f in frames(watcher) if f["type"] == "presence.changed"]
    assert [(f["user_id"], f["status"]) for f in changes] == [("alice", "available")]
    assert record.status == "available"


async def test_an_overtaken_connect_that_writes_after_the_newer_one_left_leaves_no_ghost() -> None:
    nodes = Nodes()
    await nodes.start()
    first, second, release = await nodes.overtaken_while_joining()
    await nodes.hubs["n2"].disconnect(second)  # the newer one leaves: no record at all
    assert nodes.record("alice") is None
    release.set()
    older = await first  # its publish finds no record, writes one, then sees it was overtaken

    assert older.close_code is CloseCode.REPLACED
    assert nodes.record("alice") is None
    assert nodes.hubs["n1"].sessions == {} and nodes.hubs["n2"].sessions == {}


async def test_a_connect_replaced_here_before_its_claim_never_claims() -> None:
    """S1 waits while the session it replaced leaves (a wing's cleanup on the store); S2
    replaces S1 and joins meanwhile. S1's claim, late, would make S2 look offline."""
    nodes = Nodes()
    hub = nodes.hubs["n1"]
    gate, leaving = asyncio.Event(), asyncio.Event()
    armed = True

    async def slow_leave(session: Session, how: Departure) -> None:
        nonlocal armed
        if armed and how is Departure.REPLACED_HERE:
            armed = False
            leaving.set()
            await gate.wait()

    hub.on_leave(slow_leave)
    await hub.connect(ALICE)
    first = asyncio.create_task(hub.connect(ALICE))  # waits in the old session's leave
    await leaving.wait()
    newest = await hub.connect(ALICE)
    gate.set()
    overtaken = await first

    assert overtaken.close_code is CloseCode.REPLACED
    assert hub.sessions["alice"] is newest
    record = nodes.record("alice")
    assert record is not None
    assert (record.session_id, record.status) == (newest.session_id, "available")


async def test_a_late_note_of_an_overtaken_session_does_not_take_the_call_back() -> None:
    """Alice's call runs on n2 and waits for her (she dropped). She reconnects on n1, whose
    welcome is slow to look the call up, and meanwhile on n2. n1's session must neither
    tell n2 "she is here" after n2's own session did, nor then "she left": the call would
    wait for a user who is connected, and end as peer_lost."""
    nodes = Nodes()
    await nodes.start()
    n2 = nodes.hubs["n2"]
    bob, alice = await n2.connect(BOB), await n2.connect(ALICE)
    await n2.handle_frame(alice, '{"type": "call.invite", "id": "1", "to": "bob"}')
    call_id = frames(alice)[-1]["call_id"]
    await n2.handle_frame(bob, f'{{"type": "call.accept", "call_id": "{call_id}"}}')
    await n2.disconnect(alice)  # dropped: the call waits out the grace period
    assert nodes.calls["n2"].book.is_lost("alice")

    real_of_users = nodes.directory.of_users
    looking, gate = asyncio.Event(), asyncio.Event()

    async def slow_once(user_ids: Iterable[str]) -> dict[str, CallEntry]:
        if not looking.is_set():
            looking.set()
            await gate.wait()
        return await real_of_users(user_ids)

    nodes.directory.of_users = slow_once  # type: ignore[method-assign]
    first = asyncio.create_task(nodes.hubs["n1"].connect(ALICE))
    await looking.wait()  # n1's session is in its welcome, looking the call up
    again = await n2.connect(ALICE)
    await settle()
    gate.set()
    await first
    await settle()

    book = nodes.calls["n2"].book
    assert not book.is_lost("alice")
    nodes.clock.advance(20)  # past the grace period
    await nodes.calls["n2"].tick()
    assert book.get(call_id) is not None
    assert [f["type"] for f in frames(bob) if f["type"] == "call.ended"] == []
    assert "call.ended" not in [f["type"] for f in frames(again)]


async def test_a_close_the_node_bus_lost_is_made_good_by_the_next_beat() -> None:
    nodes = Nodes()
    await nodes.start()
    older = await nodes.hubs["n1"].connect(ALICE)
    nodes.wire.lost.add(CloseSession)
    newer = await nodes.hubs["n2"].connect(ALICE)
    await settle()
    assert older.close_code is None  # two live sessions, until n1's next beat
    await nodes.presence["n1"].beat()
    assert older.close_code is CloseCode.REPLACED
    await nodes.hubs["n1"].disconnect(older)  # its socket closes
    assert nodes.hubs["n1"].sessions == {}
    assert nodes.where("alice") == ("n2", newer.session_id, "available")
    await nodes.presence["n2"].beat()
    assert newer.close_code is None
