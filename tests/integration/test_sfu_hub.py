"""A paid call through the hub in sfu mode with two real aiortc peers on 127.0.0.1: each
negotiates with the server over rtc.offer/rtc.answer/rtc.ice, decodes the other's media, and
when billing ends the call (money ran out) both peer connections are closed within 1 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from tests.conftest import MakeSettings, MakeToken
from tests.mediautil import LoopbackClient
from tests.wsutil import recv, until

AiohttpClient = Any
SFU_ON_LOOPBACK = {"mode": "sfu", "host_addresses": ["127.0.0.1"], "include_loopback": True}


async def negotiate(ws: aiohttp.ClientWebSocketResponse, client: LoopbackClient, cid: str) -> None:
    await ws.send_json(
        {"type": "rtc.offer", "id": "o", "call_id": cid, "sdp": await client.offer()}
    )
    answer = await recv(ws, "rtc.answer")
    assert answer["from"] == "sfu"
    await client.accept(answer["sdp"])


async def paid_call(
    client: TestClient[Any, Any], token_for: MakeToken, *, coins: int, record: bool = False
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse, str, dict[str, Any]]:
    """alice (given ``coins``) calls host bob, who accepts: (alice_ws, bob_ws, call id,
    alice's call.started)."""
    admin = {"Authorization": "Bearer " + token_for("root", "admin")}
    body = {"user_id": "alice", "amount": coins, "idempotency_key": "k"}
    assert (await client.post("/v1/admin/credit", json=body, headers=admin)).status == 200
    alice_ws = await client.ws_connect("/v1/ws?token=" + token_for("alice"))
    assert (await recv(alice_ws, "welcome"))["media"] == "sfu"
    bob_ws = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
    await recv(bob_ws, "welcome")
    await alice_ws.send_json({"type": "call.invite", "id": "1", "to": "bob", "record": record})
    cid = (await recv(alice_ws, "ack"))["call_id"]
    await bob_ws.send_json({"type": "call.accept", "call_id": cid, "record": record})
    started = await recv(alice_ws, "call.started")
    await recv(bob_ws, "call.started")
    return alice_ws, bob_ws, cid, started


async def test_call_media_through_the_sfu_stops_when_money_runs_out(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    settings = make_settings(
        # Connected legs are never ended by the media watchdog: this call outlives 3 s.
        media=SFU_ON_LOOPBACK | {"connect_timeout_s": 3},
        billing={"minute_seconds": 1, "loop_interval_s": 0.05, "default_rate": 7},
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    alice_ws, bob_ws, cid, started = await paid_call(client, token_for, coins=28)  # 4 minutes
    assert started["media"] == "sfu"

    alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
    try:
        await negotiate(alice_ws, alice, cid)
        await negotiate(bob_ws, bob, cid)
        await bob_ws.send_json({"type": "rtc.answer", "id": "x", "call_id": cid, "sdp": "v=0"})
        assert (await recv(bob_ws, "error"))["code"] == "invalid_state"  # the SFU never offers

        def flowing() -> bool:
            return all(c.frames("video") >= 10 and c.frames("audio") >= 10 for c in (alice, bob))

        await until(flowing, 15, "each client to decode the other's audio and video")

        ended = await recv(alice_ws, "call.ended")
        assert ended["reason"] == "insufficient_balance"
        ended_at = time.monotonic()
        await until(
            lambda: all(
                c.ended() or c.pc.connectionState in ("closed", "failed") for c in (alice, bob)
            ),
            1.0,
            "both peer connections to be closed by the server",
        )
        assert time.monotonic() - ended_at < 1.0
        frozen = (alice.frames("video"), bob.frames("video"))
        await asyncio.sleep(0.5)
        assert (alice.frames("video"), bob.frames("video")) == frozen  # media really stopped
    finally:
        await asyncio.gather(alice.close(), bob.close())


@pytest.mark.parametrize("bob_offers", [True, False])
async def test_a_call_whose_media_never_connects_ends_media_failed(
    bob_offers: bool,
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
) -> None:
    settings = make_settings(
        media=SFU_ON_LOOPBACK | {"connect_timeout_s": 1},
        billing={"minute_seconds": 60, "default_rate": 7},
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    alice_ws, bob_ws, cid, _ = await paid_call(client, token_for, coins=70)
    started = time.monotonic()  # the media watchdog starts with the call

    alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
    try:
        await negotiate(alice_ws, alice, cid)
        if bob_offers:
            # Bob's offer is answered, but his side never connects (say UDP is blocked).
            await bob_ws.send_json(
                {"type": "rtc.offer", "id": "o", "call_id": cid, "sdp": await bob.offer()}
            )
            await recv(bob_ws, "rtc.answer")
        # else bob's app never offers at all: alice would pay for a black screen.
        ended = [await recv(ws, "call.ended") for ws in (alice_ws, bob_ws)]
        assert [e["reason"] for e in ended] == ["media_failed", "media_failed"]
        assert 0.9 <= time.monotonic() - started < 5
        assert ended[0]["minutes"] == 1  # the first minute, charged at accept; no more
        wallet = await client.get(
            "/v1/wallet", headers={"Authorization": "Bearer " + token_for("alice")}
        )
        assert (await wallet.json())["wallet"] == 63
    finally:
        await asyncio.gather(alice.close(), bob.close())


async def test_a_party_that_reconnects_renegotiates_and_gets_media_back(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    settings = make_settings(media=SFU_ON_LOOPBACK, hub={"peer_lost_grace_s": 10})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    alice_ws, bob_ws, cid, _ = await paid_call(client, token_for, coins=1000)

    alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
    bob_again = LoopbackClient("bob")
    try:
        await negotiate(alice_ws, alice, cid)
        await negotiate(bob_ws, bob, cid)
        await until(lambda: alice.frames("video") >= 10, 15, "alice to see bob")

        # bob's network drops: socket and peer connection gone; he comes back in time.
        await bob_ws.close()
        await bob.close()
        bob_ws = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        welcome = await recv(bob_ws, "welcome")
        assert welcome["call"]["call_id"] == cid and welcome["call"]["state"] == "active"
        before = alice.frames("video")
        await negotiate(bob_ws, bob_again, cid)

        def both_ways() -> bool:
            return bob_again.frames("video") >= 10 and alice.frames("video") >= before + 10

        await until(both_ways, 15, "media both ways after bob renegotiated")
        await alice_ws.send_json({"type": "call.end", "call_id": cid})
        assert (await recv(bob_ws, "call.ended"))["reason"] == "hangup"
    finally:
        await asyncio.gather(alice.close(), bob.close(), bob_again.close())


async def test_a_consented_call_is_recorded_and_downloadable(
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
    tmp_path: Path,
) -> None:
    media = {**SFU_ON_LOOPBACK, "recording": "opt_in", "record_dir": str(tmp_path / "rec")}
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings(media=media)))
    admin = {"Authorization": "Bearer " + token_for("root", "admin")}
    alice_ws, bob_ws, cid, started_msg = await paid_call(client, token_for, coins=1000, record=True)
    assert started_msg["record"] is True
    started = time.monotonic()

    alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
    try:
        await negotiate(alice_ws, alice, cid)
        await negotiate(bob_ws, bob, cid)
        await until(lambda: alice.frames("video") >= 10 and bob.frames("video") >= 10, 15, "media")
        await asyncio.sleep(2.0)
        await alice_ws.send_json({"type": "call.end", "call_id": cid})
        await recv(alice_ws, "call.ended")
        call_s = time.monotonic() - started
    finally:
        await asyncio.gather(alice.close(), bob.close())

    listing: dict[str, Any] = {}
    for _ in range(50):  # the files are closed off the event loop right after the call
        listing = await (await client.get("/v1/admin/recordings", headers=admin)).json()
        if len([r for r in listing["recordings"] if r["complete"]]) == 2:
            break
        await asyncio.sleep(0.2)
    recs = {r["party"]: r for r in listing["recordings"] if r["call_id"] == cid}
    assert set(recs) == {"alice", "bob"} and all(r["complete"] for r in recs.values())
    user = {"Authorization": "Bearer " + token_for("alice")}
    assert (await client.get("/v1/admin/recordings", headers=user)).status == 403
    resp = await client.get(f"/v1/admin/recordings/{cid}/alice", headers=admin)
    assert resp.status == 200
    path = tmp_path / "download.webm"
    path.write_bytes(await resp.read())
    with av.open(str(path)) as container:
        kinds = {s.type for s in container.streams}
        assert kinds == {"audio", "video"}
        duration = float(container.duration or 0) / av.time_base
    # The recording spans the call (from alice's first packet, a moment after call.started,
    # to the end): within a second of the call's duration.
    assert abs(duration - call_s) <= 1.0, (duration, call_s)
    assert (await client.get(f"/v1/admin/recordings/{cid}/carol", headers=admin)).status == 404
