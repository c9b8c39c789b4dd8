"""What an outside probe found (issue 14), each over real sockets: frame caps at their exact
boundaries, REST errors as JSON, replays, connection limits, and a client that stops reading
in the middle of a paid call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import WSMsgType

from signalling.app import create_app
from signalling.calls.hooks import FreeCalls
from signalling.settings import Settings
from tests.conftest import MakeSettings, MakeToken
from tests.rawws import RawClient
from tests.wsutil import connect, recv

AiohttpClient = Any


async def test_frame_caps_at_their_exact_boundaries(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    settings = make_settings(hub={"max_frame_bytes": 4096, "hard_frame_bytes": 8192})
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    ws = await connect(client, token_for("alice"))

    def frame(size: int, fill: str = "x") -> str:
        head, tail = '{"type":"presence.update","id":"' + fill[:1] + '","status":"away","p":"', '"}'
        room = size - len((head + tail).encode())
        text = head + fill * (room // len(fill.encode())) + tail
        assert len(text.encode()) == size, (len(text.encode()), size)
        return text

    await ws.send_str(frame(4096))  # exactly max_frame_bytes: handled
    assert (await recv(ws, "ack"))["id"] == "x"
    await ws.send_str(frame(4097))
    err = await recv(ws, "error")
    assert (err["code"], err["id"]) == ("frame_too_large", "x")
    # Bytes, not characters: three-byte characters put this frame over in fewer characters.
    euro = '{"type":"presence.update","id":"e","status":"away","p":"' + "€" * 1400 + '"}'
    assert len(euro) < 4096 < len(euro.encode())
    await ws.send_str(euro)
    assert (await recv(ws, "error"))["code"] == "frame_too_large"
    await ws.send_str(frame(8192))  # exactly hard_frame_bytes: an error, not a close
    assert (await recv(ws, "error"))["code"] == "frame_too_large"
    await ws.send_str(frame(8193))
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1009


async def test_rest_errors_are_json_and_say_nothing_of_internals(
    aiohttp_client: AiohttpClient, settings: Settings, token_for: MakeToken
) -> None:
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    alice = {"Authorization": "Bearer " + token_for("alice")}

    async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str, str]:
        assert resp.content_type == "application/json", await resp.text()
        body = await resp.json()
        assert set(body) == {"error", "message"}
        return resp.status, body["error"], body["message"]

    # float('²') used to be a 500; every odd "before" is a 400 now.
    for before in ("%C2%B2", "1e400", "nan", "-1", "1.2.3", "%D9%A3"):
        status, code, _ = await error_of(
            await client.get(f"/v1/calls?before={before}", headers=alice)
        )
        assert (status, code) == (400, "invalid_request"), before
    resp = await client.get("/v1/calls?before=1767225600.5", headers=alice)
    assert resp.status == 200
    for limit in ("%C2%B2", "201", "x"):
        status, code, _ = await error_of(
            await client.get(f"/v1/calls?limit={limit}", headers=alice)
        )
        assert (status, code) == (400, "invalid_request"), limit
    assert (await client.get("/v1/wallet/entries?limit=200", headers=alice)).status == 200
    assert (await error_of(await client.get("/v1/nothing-here")))[:2] == (404, "not_found")
    assert (await error_of(await client.delete("/v1/wallet", headers=alice)))[:2] == (
        405,
        "method_not_allowed",
    )
    admin = {"Authorization": "Bearer " + token_for("root", "admin")}
    too_big = await client.post("/v1/admin/credit", data=b"x" * 70_000, headers=admin)
    assert (await error_of(too_big))[:2] == (413, "too_large")
    # A token that is not UTF-8 inside: the 401 names the failure, not the decoder's text.
    bad = "gICA.e30.c2ln"  # a header that is not UTF-8
    status, code, message = await error_of(
        await client.get("/v1/wallet", headers={"Authorization": "Bearer " + bad})
    )
    assert (status, code) == (401, "token_invalid")
    assert message == "invalid token: malformed" and "codec" not in message
    forged = jwt.encode({"sub": "alice", "role": "caller", "exp": 9999999999}, "k" * 32)
    _, _, message = await error_of(
        await client.get("/v1/wallet", headers={"Authorization": "Bearer " + forged})
    )
    assert message == "invalid token: bad signature"


async def test_a_replayed_withdrawal_is_200_not_a_second_201(
    aiohttp_client: AiohttpClient, settings: Settings, token_for: MakeToken
) -> None:
    client = await aiohttp_client(create_app(settings))
    admin = {"Authorization": "Bearer " + token_for("root", "admin")}
    bob = {"Authorization": "Bearer " + token_for("bob", "host")}
    await client.put("/v1/admin/gifts/rose", json={"name": "Rose", "price": 10}, headers=admin)
    await client.post(
        "/v1/admin/credit",
        json={"user_id": "alice", "amount": 10, "idempotency_key": "k"},
        headers=admin,
    )
    alice = await connect(client, token_for("alice"))
    await connect(client, token_for("bob", "host"))
    gift = {"type": "gift.send", "id": "1", "to": "bob", "gift_id": "rose", "idempotency_key": "g"}
    await alice.send_json(gift)
    await recv(alice, "ack")
    body = {"amount": 3, "idempotency_key": "w1"}
    first = await client.post("/v1/withdrawals", json=body, headers=bob)
    again = await client.post("/v1/withdrawals", json=body, headers=bob)
    assert (first.status, again.status) == (201, 200)
    assert await first.json() == await again.json()
    assert "replayed" not in await first.json()
    wallet = await (await client.get("/v1/wallet", headers=bob)).json()
    assert wallet == {"wallet": 0, "earnings": 2, "withdrawal_pending": 3}


async def test_connections_per_address_are_limited(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    """500 connections from one address used to be welcomed."""
    settings = make_settings(hub={"max_connections_per_ip": 3})
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    held = [await connect(client, token_for(f"u{n}")) for n in range(3)]
    refused = await client.ws_connect(f"/v1/ws?token={token_for('u3')}")
    msg = await refused.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (
        WSMsgType.CLOSE,
        4008,
        "too many connections from your address",
    )
    await held[0].close()
    for _ in range(50):  # the server notices the close on its next read
        again = await client.ws_connect(f"/v1/ws?token={token_for('u3')}")
        first = await again.receive(timeout=5)
        if first.type is WSMsgType.TEXT:
            break
        await asyncio.sleep(0.05)
    assert first.json()["type"] == "welcome"


async def test_new_connections_per_address_and_sessions_per_user_are_rate_limited(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    settings = make_settings(
        hub={
            "connects_per_ip_per_s": 0.01,
            "connect_burst_per_ip": 6,
            "connects_per_user_per_min": 0.1,
            "connect_burst_per_user": 2,
        }
    )
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    reasons = []
    for _ in range(3):  # one user reconnecting in a loop: each would replace the last
        ws = await client.ws_connect(f"/v1/ws?token={token_for('loop')}")
        msg = await ws.receive(timeout=5)
        reasons.append(msg.json()["type"] if msg.type is WSMsgType.TEXT else msg.extra)
    assert reasons == ["welcome", "welcome", "reconnecting too often"]
    others = [await client.ws_connect(f"/v1/ws?token={token_for(f'o{n}')}") for n in range(4)]
    last = await others[-1].receive(timeout=5)
    assert (last.data, last.extra) == (4008, "connecting too often from your address")
    assert (await others[0].receive(timeout=5)).json()["type"] == "welcome"


async def test_a_party_that_stops_reading_is_dropped_and_its_call_ends_peer_lost(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    """The probe: a frozen party while its peer keeps sending offers and typing was not
    closed, not shown offline, and the paid call went on. Only the write stall can catch it
    here: the queue caps are out of reach and the ping far away."""
    settings = make_settings(
        hub={
            "send_timeout_s": 1.0,
            "send_queue_max": 1_000_000,
            "send_queue_max_bytes": 1 << 30,
            "heartbeat_s": 120,
            "peer_lost_grace_s": 0.5,
            "rate_per_s": 500,
            "rate_burst": 500,
        }
    )
    client = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
    port = client.server.port
    assert port is not None
    alice = await connect(client, token_for("alice"))
    bob = await asyncio.to_thread(RawClient, port, token_for("bob", "host"))
    try:
        assert (await asyncio.to_thread(bob.receive_json))["type"] == "welcome"
        await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
        await recv(alice, "ack")
        await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        while (await asyncio.to_thread(bob.receive_json))["type"] != "call.incoming":
            pass
        await asyncio.to_thread(bob.send_json, {"type": "call.accept", "call_id": cid})
        await recv(alice, "call.started")
        # Bob freezes. Alice renegotiates and types, as an app does while the video is stuck.
        started = time.monotonic()
        sdp = "v=0\r\n" + "a=x\r\n" * 9000
        ended: dict[str, Any] | None = None
        offline = False
        while ended is None and time.monotonic() - started < 20:
            await alice.send_json({"type": "rtc.offer", "call_id": cid, "sdp": sdp})
            await alice.send_json({"type": "chat.typing", "to": "bob", "typing": True})
            try:
                frame = await alice.receive_json(timeout=0.02)
            except TimeoutError:
                continue
            if frame["type"] == "presence.changed" and frame["status"] == "offline":
                offline = True
            if frame["type"] == "call.ended":
                ended = frame
        assert ended is not None, "the frozen party was never dropped"
        assert ended["reason"] == "peer_lost" and offline
        assert await asyncio.to_thread(bob.cut_within, 5.0), "the server kept the socket open"
    finally:
        bob.close()
