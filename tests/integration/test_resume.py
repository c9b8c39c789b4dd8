"""Session resume (issue 10, §3.1) with real sockets cut by a proxy: across two nodes on the
real Redis and PostgreSQL, and in embedded mode (memory). The client counts the frames it
got; after the cut it resumes with that count and must receive exactly what it missed, in
order, once; a resume that cannot do that says `resync_required`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from tests.conftest import MakeSettings, MakeToken
from tests.hostile.faults import CutProxy
from tests.integration.test_cross_node_calls import cluster
from tests.wsutil import recv

AiohttpClient = Any


class Counted:
    """A client that keeps every frame after welcome, as §3.1 tells clients to count."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws, self.welcome = ws, welcome
        self.frames: list[dict[str, Any]] = []
        self._cursor = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))

    async def next(self, kind: str, within_s: float = 5.0) -> dict[str, Any]:
        """The next frame of this kind after the last one returned (all are kept)."""
        async with asyncio.timeout(within_s):
            while True:
                for i in range(self._cursor, len(self.frames)):
                    if self.frames[i]["type"] == kind:
                        self._cursor = i + 1
                        return self.frames[i]
                await asyncio.sleep(0.01)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def stop(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()


@asynccontextmanager
async def through(node: TestClient[Any, Any]) -> AsyncIterator[CutProxy]:
    assert node.port is not None
    proxy = CutProxy("127.0.0.1", node.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def join(http: aiohttp.ClientSession, base: str, token: str, query: str = "") -> Counted:
    ws = await http.ws_connect(f"{base}/v1/ws?token={token}{query}")
    welcome = await recv(ws, "welcome")
    return Counted(ws, welcome)


async def test_a_client_cut_mid_call_resumes_on_the_other_node_with_exactly_what_it_missed(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with (
        cluster(aiohttp_client, make_settings, token_for) as c,
        through(c.a) as proxy,
        aiohttp.ClientSession() as http,
    ):
        alice_token = token_for("alice")
        alice = await join(http, f"http://127.0.0.1:{proxy.port}", alice_token)  # on A
        assert alice.welcome["resume_token"] and not alice.welcome.get("resumed")
        bob = await c.join(c.b, "bob", "host")
        carol = await c.join(c.b, "carol")
        await alice.ws.send_json({"type": "presence.watch", "id": "w", "user_ids": ["carol"]})
        await alice.next("ack")
        await alice.ws.send_json({"type": "call.invite", "id": "i", "to": "bob"})
        cid = (await alice.next("ack"))["call_id"]
        await bob.send_json({"type": "call.accept", "call_id": cid})
        await alice.next("call.started")
        await alice.next("billing.tick", within_s=3)

        proxy.cut()  # the socket dies mid-call, without a closing handshake
        await alice.stop()
        got_before = len(alice.frames)  # what the client got: its count (§3.1)
        ticks_before = [t["minute"] for t in alice.of("billing.tick")]
        before = {json.dumps(f, sort_keys=True) for f in alice.frames}
        await asyncio.sleep(0.3)
        for i in range(3):
            await bob.send_json(
                {"type": "chat.send", "to": "alice", "client_msg_id": f"m{i}", "text": f"hi {i}"}
            )
        await carol.send_json({"type": "presence.update", "status": "away"})
        await asyncio.sleep(2.5)  # ticks go on meanwhile (minutes of 1 s)

        # Back, on node B, with the count of frames it got.
        token = alice.welcome["resume_token"]
        again = await join(
            http,
            str(c.b.make_url("")).rstrip("/"),
            alice_token,
            f"&resume={token}&last_seq={got_before}",
        )
        assert again.welcome["resumed"] is True
        assert again.welcome["call"]["call_id"] == cid  # the call never ended
        await asyncio.sleep(1.5)
        await again.ws.send_json({"type": "call.end", "call_id": cid})
        ended = await again.next("call.ended")
        assert ended["reason"] == "hangup"
        await again.stop()

        replay = again.frames
        # Nothing it had already got comes again.
        assert not before & {json.dumps(f, sort_keys=True) for f in replay}
        chats = [f["message"]["text"] for f in replay if f["type"] == "chat.message"]
        assert chats == ["hi 0", "hi 1", "hi 2"]  # each once, in order (no backlog copy)
        assert [f["status"] for f in replay if f["type"] == "presence.changed"] == ["away"]
        assert all(f["type"] != "error" for f in replay), replay
        # Ticks: the minutes before the cut and after it join with no gap and no repeat.
        minutes = ticks_before + [t["minute"] for t in replay if t["type"] == "billing.tick"]
        assert minutes == list(range(minutes[0], minutes[0] + len(minutes))), minutes
        assert len(minutes) >= 4
        # The resume token is spent: using it again resumes nothing.
        stale = await join(
            http,
            str(c.a.make_url("")).rstrip("/"),
            alice_token,
            f"&resume={token}&last_seq={got_before}",
        )
        assert not stale.welcome.get("resumed")
        assert (await stale.next("error"))["code"] == "resync_required"
        await stale.stop()


async def test_resumes_that_cannot_give_everything_say_resync_required(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    settings = make_settings(hub={"resume_window_s": 1.0, "resume_buffer_frames": 8})
    node: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    base = str(node.make_url("")).rstrip("/")
    async with through(node) as proxy, aiohttp.ClientSession() as http:
        via = f"http://127.0.0.1:{proxy.port}"

        async def cut_session(user: str) -> tuple[str, int]:
            client = await join(http, via, token_for(user))
            await client.ws.send_json({"type": "presence.update", "id": "u", "status": "away"})
            await client.next("ack")
            proxy.cut()
            await client.stop()
            proxy.restore()
            await asyncio.sleep(0.2)
            return client.welcome["resume_token"], 1

        async def resumed(user: str, query: str) -> bool:
            client = await join(http, base, token_for(user), query)
            if client.welcome.get("resumed"):
                await client.stop()
                return True
            assert (await client.next("error"))["code"] == "resync_required"
            await client.stop()
            return False

        # Embedded mode resumes too: here, with nothing missed.
        token, seq = await cut_session("alice")
        assert await resumed("alice", f"&resume={token}&last_seq={seq}")
        # Forged, someone else's, a count beyond what was sent, expired.
        token, seq = await cut_session("alice")
        assert not await resumed("alice", "&resume=forged&last_seq=0")
        token, seq = await cut_session("alice")
        assert not await resumed("mallory", f"&resume={token}&last_seq={seq}")
        assert not await resumed("alice", f"&resume={token}&last_seq=999")
        token, seq = await cut_session("alice")
        await asyncio.sleep(1.3)
        assert not await resumed("alice", f"&resume={token}&last_seq={seq}")
        # Overflow: more frames came while away than the buffer holds.
        token, seq = await cut_session("alice")
        bob = await join(http, base, token_for("bob", "host"))
        for i in range(12):
            await bob.ws.send_json(
                {"type": "chat.send", "to": "alice", "client_msg_id": f"o{i}", "text": "x"}
            )
        await asyncio.sleep(0.3)
        assert not await resumed("alice", f"&resume={token}&last_seq={seq}")
        await bob.stop()


async def test_a_dropped_party_is_busy_on_every_node_while_the_call_waits(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with (
        cluster(aiohttp_client, make_settings, token_for) as c,
        through(c.b) as proxy,
        aiohttp.ClientSession() as http,
    ):
        alice = await c.join(c.a, "alice")  # node A runs the call
        bob = await join(http, f"http://127.0.0.1:{proxy.port}", token_for("bob", "host"))
        await alice.send_json({"type": "call.invite", "id": "i", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        await bob.ws.send_json({"type": "call.accept", "call_id": cid})
        await recv(alice, "call.started")

        proxy.cut()  # bob's connection drops: parked on B, his call waits for him (5 s)
        await bob.stop()
        await asyncio.sleep(0.5)
        for node, who in ((c.a, "carol"), (c.b, "dave")):
            watcher = await c.join(node, who)
            await watcher.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
            assert (await recv(watcher, "ack"))["presence"] == {"bob": "busy"}, who
            await watcher.send_json({"type": "call.invite", "id": "x", "to": "bob"})
            assert (await recv(watcher, "error"))["code"] == "callee_busy", who
            # When the call gives up on him, he is offline (not busy) for everyone.
            if who == "dave":
                ended = await recv(alice, "call.ended", within_s=8)
                assert ended["reason"] == "peer_lost"
                changed = await recv(watcher, "presence.changed", within_s=5)
                assert (changed["user_id"], changed["status"]) == ("bob", "offline")
