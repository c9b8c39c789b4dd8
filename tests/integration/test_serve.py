"""`jalwa serve` as a user runs it: a real process, tokens from `jalwa token`, real sockets.

With JALWA_REDIS_URL set, presence lives in Redis and disappears when the process is killed.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.integration.processes import Server, serve
from tests.integration.services import require_redis
from tests.wsutil import recv


@asynccontextmanager
async def clients(server: Server) -> AsyncIterator[tuple[Any, Any]]:
    async with aiohttp.ClientSession() as http:
        # An admin tops up the caller: a call needs at least one minute of coins.
        admin = server.token("root", "admin")
        resp = await http.post(
            f"{server.url}/v1/admin/credit",
            json={"user_id": "alice", "amount": 100, "idempotency_key": uuid.uuid4().hex},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert resp.status == 200, await resp.text()
        alice = await http.ws_connect(f"{server.url}/v1/ws?token={server.token('alice', 'caller')}")
        bob = await http.ws_connect(f"{server.url}/v1/ws?token={server.token('bob', 'host')}")
        await recv(alice, "welcome")
        await recv(bob, "welcome")
        yield alice, bob


async def full_call(alice: Any, bob: Any) -> None:
    await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
    assert (await recv(alice, "ack"))["presence"] == {"bob": "available"}
    await bob.send_json({"type": "presence.watch", "id": "w", "user_ids": ["alice"]})
    assert (await recv(bob, "ack"))["presence"] == {"alice": "available"}
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await recv(bob, "call.incoming")
    await bob.send_json({"type": "call.accept", "id": "2", "call_id": cid})
    await recv(alice, "call.started")
    await alice.send_json({"type": "rtc.offer", "call_id": cid, "sdp": "v=0 offer"})
    assert (await recv(bob, "rtc.offer"))["sdp"] == "v=0 offer"
    await bob.send_json({"type": "rtc.answer", "call_id": cid, "sdp": "v=0 answer"})
    assert (await recv(alice, "rtc.answer"))["sdp"] == "v=0 answer"
    await alice.send_json({"type": "rtc.ice", "call_id": cid, "candidate": "candidate:1 1 udp"})
    assert (await recv(bob, "rtc.ice"))["candidate"] == "candidate:1 1 udp"
    await bob.send_json({"type": "call.end", "id": "3", "call_id": cid})
    for ws in (alice, bob):
        assert (await recv(ws, "call.ended"))["reason"] == "hangup"


async def test_embedded_defaults(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        async with clients(server) as (alice, bob):
            await full_call(alice, bob)
        async with aiohttp.ClientSession() as http:
            page = await (await http.get(server.url + "/")).text()
            assert "<html" in page.lower()
            # Everything the page loads is served, and nothing else under /app/.
            for path in (
                "/app/app.js",
                "/app/chat.js",
                "/app/words.js",
                "/app/app.css",
                "/jalwa.js",
            ):
                async with http.get(server.url + path) as resp:
                    assert resp.status == 200, path
            async with http.get(server.url + "/app/index.html") as resp:
                assert resp.status == 404
            # The development catalog is there for the page's gift button.
            token = server.token("alice", "caller")
            async with http.get(
                server.url + "/v1/gifts", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert [g["gift_id"] for g in (await resp.json())["gifts"]] == [
                    "rose",
                    "heart",
                    "star",
                    "crown",
                ]
    # The README's first command ends by saying where the page is.
    log = (tmp_path / f"serve-{server.port}.log").read_text()
    assert f"jalwa: the demo app is at {server.url}/" in log


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(require_redis())
    try:
        yield client
    finally:
        await client.aclose()


async def test_with_redis_presence_dies_with_the_process(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
    extra = {
        "JALWA_REDIS_URL": require_redis(),
        "JALWA_PRESENCE__KEY_PREFIX": prefix,
        "JALWA_PRESENCE__TTL_S": "3",
        "JALWA_PRESENCE__NODE_TTL_S": "2",
    }
    try:
        with serve(tmp_path, **extra, JALWA_NODE_ID="node-a") as server:
            async with clients(server) as (alice, bob):
                await full_call(alice, bob)
                keys = {k.decode() async for k in redis_client.scan_iter(f"{prefix}:*")}
                assert f"{prefix}:p:u:alice" in keys and f"{prefix}:p:node:node-a" in keys
                # call.ended goes out before the hub re-publishes presence: poll briefly.
                deadline = time.monotonic() + 5
                while await redis_client.hget(f"{prefix}:p:u:bob", "status") != b"available":
                    assert time.monotonic() < deadline, "bob stayed busy after the call"
                    await asyncio.sleep(0.05)
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(5)
                start = time.monotonic()
                while await redis_client.exists(f"{prefix}:p:u:alice", f"{prefix}:p:u:bob"):
                    assert time.monotonic() - start < 5, "presence outlived the killed process"
                    await asyncio.sleep(0.2)

        # A second node sees them offline; an orderly stop (SIGTERM) retires at once.
        with serve(tmp_path, **extra, JALWA_NODE_ID="node-b") as server:
            async with clients(server) as (alice, bob):
                await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["carol"]})
                assert (await recv(alice, "ack"))["presence"] == {"carol": "offline"}
                server.proc.send_signal(signal.SIGTERM)
                msg = await alice.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1012
                server.proc.wait(10)
                assert server.proc.returncode == 0
                assert not await redis_client.exists(f"{prefix}:p:u:alice")
    finally:
        leftovers = [k async for k in redis_client.scan_iter(f"{prefix}:*")]
        if leftovers:
            await redis_client.delete(*leftovers)
