"""The hub over real WebSockets (aiohttp test server on loopback, embedded stores)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.calls.hooks import FreeCalls
from signalling.keys import HUB
from signalling.protocol import CloseCode
from signalling.settings import Settings
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv, until

AiohttpClient = Any


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings, hooks=FreeCalls()))  # type: ignore[no-any-return]


async def test_two_clients_full_call(client: TestClient[Any, Any], token_for: MakeToken) -> None:
    alice = await connect(client, token_for("alice", "caller"))
    bob_ws = await client.ws_connect(
        "/v1/ws", headers={"Authorization": "Bearer " + token_for("bob", "host")}
    )
    welcome = await recv(bob_ws, "welcome")
    assert welcome["user"]["id"] == "bob" and welcome["heartbeat_s"] == 10
    bob = bob_ws

    await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
    ack = await recv(alice, "ack")
    assert ack["presence"] == {"bob": "available"}
    await bob.send_json({"type": "presence.watch", "id": "w", "user_ids": ["alice"]})
    assert (await recv(bob, "ack"))["presence"] == {"alice": "available"}

    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    assert (await recv(alice, "call.ringing"))["call_id"] == cid
    assert (await recv(bob, "call.incoming"))["caller"]["id"] == "alice"
    await bob.send_json({"type": "call.accept", "id": "2", "call_id": cid})
    assert (await recv(alice, "call.started"))["media"] == "p2p"
    await recv(bob, "call.started")

    await alice.send_json({"type": "rtc.offer", "call_id": cid, "sdp": "v=0 o"})
    assert (await recv(bob, "rtc.offer"))["sdp"] == "v=0 o"
    await bob.send_json({"type": "rtc.answer", "call_id": cid, "sdp": "v=0 a"})
    assert (await recv(alice, "rtc.answer"))["from"] == "bob"
    await bob.send_json(
        {
            "type": "rtc.ice",
            "call_id": cid,
            "candidate": "candidate:9",
            "sdp_mid": "0",
            "sdp_mline_index": 0,
        }
    )
    assert (await recv(alice, "rtc.ice"))["candidate"] == "candidate:9"

    await alice.send_json({"type": "call.end", "id": "3", "call_id": cid})
    for ws in (alice, bob):
        ended = await recv(ws, "call.ended")
        assert ended["reason"] == "hangup" and ended["call_id"] == cid

    await bob.close()
    offline = await recv(alice, "presence.changed")
    while offline["status"] != "offline":
        offline = await recv(alice, "presence.changed")
    assert offline["user_id"] == "bob"
    await alice.close()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "token_missing"),
        ("garbage", "token_invalid"),
        (jwt.encode({"sub": "x", "role": "caller"}, "k" * 40, algorithm="HS256"), "token_invalid"),
        (
            jwt.encode({"sub": "x", "role": "caller", "exp": 9999999999}, "", algorithm="none"),
            "token_invalid",
        ),
    ],
)
async def test_bad_tokens_close_4001(client: TestClient[Any, Any], token: str, reason: str) -> None:
    ws = await client.ws_connect(f"/v1/ws?token={token}")
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 4001 and msg.extra == reason


async def test_expired_and_wrong_role_tokens(
    client: TestClient[Any, Any], token_for: MakeToken, settings: Settings
) -> None:
    ws = await client.ws_connect("/v1/ws?token=" + token_for("old", ttl=-60))
    msg = await ws.receive()
    assert (msg.data, msg.extra) == (4001, "token_expired")
    key = settings.auth.dev_key_file.read_bytes().strip()
    bad_role = jwt.encode({"sub": "x", "role": "root", "exp": 9999999999}, key, algorithm="HS256")
    ws = await client.ws_connect("/v1/ws?token=" + bad_role)
    msg = await ws.receive()
    assert (msg.data, msg.extra) == (4001, "token_invalid")


async def test_replaced_session_closes_4009(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    first = await connect(client, token_for("alice"))
    second = await connect(client, token_for("alice"))
    msg = await first.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == 4009
    await second.send_json({"type": "presence.update", "id": "1", "status": "away"})
    assert (await recv(second, "ack"))["id"] == "1"
    await second.close()


async def test_oversized_frame(
    client: TestClient[Any, Any], token_for: MakeToken, settings: Settings
) -> None:
    ws = await connect(client, token_for("alice"))
    await ws.send_str('{"type":"presence.update","id":"1","sdp":"' + "x" * 70_000 + '"}')
    err = await recv(ws, "error")
    assert err["code"] == "frame_too_large"
    await ws.send_str("x" * (settings.hub.hard_frame_bytes + 1))
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == 1009


async def test_flood_closes_4008_and_others_keep_going(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    client = await aiohttp_client(
        create_app(
            hooks=FreeCalls(),
            settings=make_settings(hub={"rate_per_s": 5, "rate_burst": 5, "flood_close_after": 20}),
        )
    )
    bystander = await connect(client, token_for("bob", "host"))
    flooder = await connect(client, token_for("alice"))
    for n in range(200):
        await flooder.send_json({"type": "presence.update", "id": str(n), "status": "away"})
    kinds: dict[str, int] = {}
    while True:
        msg = await flooder.receive(timeout=3)
        if msg.type is not WSMsgType.TEXT:
            break
        kind = msg.json()["type"]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert msg.type is WSMsgType.CLOSE and msg.data == 4008
    assert kinds.get("ack", 0) >= 5 and kinds.get("error", 0) >= 1
    await bystander.send_json({"type": "presence.update", "id": "b", "status": "away"})
    assert (await recv(bystander, "ack"))["id"] == "b"


async def test_garbage_never_hurts_others(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    bob = await connect(client, token_for("bob", "host"))
    alice = await connect(client, token_for("alice"))
    for frame in [
        "{",
        "null",
        '{"type":5}',
        '{"type":"call.accept","call_id":7}',
        "\u0000",
        '{"type":"call.end","call_id":"someone-elses","id":"z"}',
    ]:
        await alice.send_str(frame)
    await alice.send_bytes(b"\x00\x01")
    codes = []
    for _ in range(7):
        codes.append((await recv(alice, "error"))["code"])
    assert codes == [
        "bad_json",
        "bad_json",
        "invalid_message",
        "invalid_message",
        "bad_json",
        "call_not_found",
        "binary_not_supported",
    ]
    await bob.send_json({"type": "presence.update", "id": "ok", "status": "away"})
    assert (await recv(bob, "ack"))["id"] == "ok"


async def test_health_and_dev_token(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/v1/dev/token?user=zed&role=host")
    token = (await resp.json())["token"]
    ws = await client.ws_connect("/v1/ws?token=" + token)
    assert (await recv(ws, "welcome"))["user"]["role"] == "host"
    assert (await client.get("/v1/dev/token?user=zed&role=admin")).status == 400
    assert (await client.get("/v1/dev/token?user=bad%20id")).status == 400
    await ws.close()


async def test_peer_lost_over_sockets(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    client = await aiohttp_client(
        create_app(hooks=FreeCalls(), settings=make_settings(hub={"peer_lost_grace_s": 0.3}))
    )
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    await recv(alice, "call.started")
    await bob.close()
    ended = await recv(alice, "call.ended")
    assert ended["reason"] == "peer_lost"


async def test_welcome_carries_short_lived_turn_credentials(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    turn = {"secret": "t" * 40, "urls": ["turn:127.0.0.1:3478?transport=udp"], "ttl_s": 600}
    settings = make_settings(turn=turn, hub={"ice_servers": [{"urls": ["stun:127.0.0.1:3478"]}]})
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    ws = await client.ws_connect("/v1/ws?token=" + token_for("alice"))
    welcome = await recv(ws, "welcome")
    stun, relay = welcome["ice_servers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    expiry, _, user = relay["username"].partition(":")
    assert user == "alice" and 590 <= int(expiry) - time.time() <= 610
    expected = base64.b64encode(
        hmac.new(b"t" * 40, relay["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert relay["credential"] == expected and relay["urls"] == turn["urls"]


async def test_compression_offered_is_declined(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    """Browsers offer permessage-deflate; a session that took it held ~113 KB of zlib state
    (5x the idle budget). The hub declines it and serves the session as usual."""
    ws = await client.ws_connect(f"/v1/ws?token={token_for('zed', 'caller')}", compress=15)
    assert "Sec-WebSocket-Extensions" not in ws._response.headers
    assert ws.compress == 0
    assert (await recv(ws, "welcome"))["user"]["id"] == "zed"
    await ws.close()


async def test_frames_keep_their_order_when_a_large_one_queues(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    """A frame too large to write at once goes through the writer task; the small ones
    sent right after it must not overtake it (the write-at-once path is for an empty
    queue only)."""
    alice = await connect(client, token_for("alice", "caller"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await recv(bob, "call.incoming")
    await bob.send_json({"type": "call.accept", "id": "2", "call_id": cid})
    await recv(bob, "call.started")
    sdp = "v=0 " + "a" * 40_000  # over the 16 KB a write may take without a deadline
    ice = {"type": "rtc.ice", "call_id": cid, "sdp_mid": "0", "sdp_mline_index": 0}
    for round_ in range(3):
        await alice.send_json({"type": "rtc.offer", "call_id": cid, "sdp": f"{sdp}{round_}"})
        for k in range(10):
            await alice.send_json({**ice, "candidate": f"candidate:{round_}-{k}"})
    for round_ in range(3):
        assert (await recv(bob, "rtc.offer"))["sdp"] == f"{sdp}{round_}"
        for k in range(10):
            got = await bob.receive_json(timeout=5)
            assert (got["type"], got["candidate"]) == ("rtc.ice", f"candidate:{round_}-{k}")
    await alice.close()
    await bob.close()


def _writers() -> list[asyncio.Task[Any]]:
    """The server's writer tasks alive (server and clients share the test's loop)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "_Writer._run" and not t.done()
    ]


async def test_an_idle_session_holds_no_writer_task(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    """The writer runs only while a session has something queued (idle memory): after the
    welcome, after a frame too large to write at once, and never after the close."""
    sockets = [await connect(client, token_for(f"idle{n}", "host")) for n in range(20)]
    await until(lambda: not _writers(), 2.0, "the writers to end after the welcomes")
    alice = await connect(client, token_for("alice", "caller"))
    await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["idle0"]})
    await recv(alice, "ack")
    session = client.app[HUB].sessions["alice"]
    session.send_frame(b'{"type":"big","x":"' + b"y" * 40_000 + b'"}')  # queues
    assert len(_writers()) == 1
    assert (await alice.receive_json(timeout=5))["type"] == "big"
    await until(lambda: not _writers(), 2.0, "the writer to end once all was sent")
    await sockets[0].send_json({"type": "presence.update", "id": "u", "status": "away"})
    assert (await recv(alice, "presence.changed"))["status"] == "away"  # written at once
    session.close(CloseCode.REPLACED, "replaced by a newer session")
    msg = await alice.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, CloseCode.REPLACED)
    await until(lambda: not _writers(), 2.0, "the writer to end after the close")
    for ws in sockets:
        await ws.close()
