"""A paid call through the hub in sfu mode with both clients forced to relay-only ICE through
a real coturn started here; a forged or expired TURN credential gets no relay at all.

coturn comes from turn.config.render (production peer rules plus the tests-only loopback hole)
on 127.0.0.1, verbose so its log names every allocation and every refusal. The hub mints each
user's TURN credential into ``welcome.ice_servers``; each LoopbackClient uses exactly those with
``iceTransportPolicy=relay``, so its only ICE candidate is the relayed address coturn allocated.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from media.ice import ice_gatherers
from signalling.app import create_app
from tests.conftest import MakeSettings, MakeToken
from tests.integration.coturn import Coturn, running_coturn
from tests.mediautil import LoopbackClient
from tests.wsutil import recv, until
from turn.credentials import mint, password_for

pytestmark = pytest.mark.integration

AiohttpClient = Any
SFU_ON_LOOPBACK = {"mode": "sfu", "host_addresses": ["127.0.0.1"], "include_loopback": True}
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with running_coturn(tmp_path_factory.mktemp("coturn"), verbose=True) as server:
        yield server


def turn_url(coturn: Coturn) -> str:
    return f"turn:{coturn.address[0]}:{coturn.address[1]}?transport=udp"


def turn_settings(coturn: Coturn) -> dict[str, Any]:
    """The app's turn section: the same secret as coturn, clients pointed at its UDP port."""
    assert coturn.settings.secret is not None
    return {
        "secret": coturn.settings.secret.get_secret_value(),
        "urls": [turn_url(coturn)],
        "listening_port": coturn.settings.listening_port,
        "min_port": coturn.settings.min_port,
        "max_port": coturn.settings.max_port,
        "allow_loopback_peers": True,
    }


def relay_only_client(name: str, ice_servers: list[dict[str, Any]]) -> LoopbackClient:
    """A LoopbackClient that may only use TURN relay candidates from ``ice_servers``."""
    configuration = RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s["username"], credential=s["credential"])
            for s in ice_servers
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    # LoopbackClient.offer() installs IcePolicy.loopback_only(); under the relay policy its
    # gather hook must add nothing (this test found it adding a 127.0.0.1 host candidate).
    return LoopbackClient(name, configuration=configuration)


def candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every candidate in ``sdp``."""
    return [(host, int(port), kind) for host, port, kind in CANDIDATE.findall(sdp)]


def selected_local_candidates(client: LoopbackClient) -> list[tuple[str, int, str]]:
    """(address, port, type) of the local side of each ICE pair nominated for ``client``
    (aioice's ``Connection._nominated``: aiortc has no public selected-pair API)."""
    return [
        (local.host, local.port, local.type)
        for gatherer in ice_gatherers(client.pc)
        for pair in gatherer._connection._nominated.values()
        if (local := pair.protocol.local_candidate) is not None
    ]


async def logged(coturn: Coturn, since: int, pattern: str, within_s: float = 5) -> str:
    """coturn's log from offset ``since`` once it matches ``pattern`` (coturn writes it async)."""
    await until(lambda: re.search(pattern, coturn.log()[since:]) is not None, within_s, pattern)
    return coturn.log()[since:]


async def start_call(
    client: TestClient[Any, Any], token_for: MakeToken
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse, dict[str, Any], str]:
    """alice (credited) calls bob; returns both sockets, each one's welcome.ice_servers, call id."""
    admin = {"Authorization": "Bearer " + token_for("root", "admin")}
    body = {"user_id": "alice", "amount": 100, "idempotency_key": "k"}
    assert (await client.post("/v1/admin/credit", json=body, headers=admin)).status == 200
    alice_ws = await client.ws_connect("/v1/ws?token=" + token_for("alice"))
    bob_ws = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
    servers = {}
    for user, ws in (("alice", alice_ws), ("bob", bob_ws)):
        welcome = await recv(ws, "welcome")
        assert welcome["media"] == "sfu"
        servers[user] = welcome["ice_servers"]
    await alice_ws.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid: str = (await recv(alice_ws, "ack"))["call_id"]
    await bob_ws.send_json({"type": "call.accept", "call_id": cid})
    assert (await recv(alice_ws, "call.started"))["media"] == "sfu"
    await recv(bob_ws, "call.started")
    return alice_ws, bob_ws, servers, cid


async def negotiate(
    ws: aiohttp.ClientWebSocketResponse, client: LoopbackClient, cid: str, offer: str
) -> None:
    await ws.send_json({"type": "rtc.offer", "id": "o", "call_id": cid, "sdp": offer})
    answer = await recv(ws, "rtc.answer")
    assert answer["from"] == "sfu"
    await client.accept(answer["sdp"])


async def test_relay_only_call_through_coturn_carries_both_ways(
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
    coturn: Coturn,
) -> None:
    settings = make_settings(media=SFU_ON_LOOPBACK, turn=turn_settings(coturn))
    app_client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    alice_ws, bob_ws, servers, cid = await start_call(app_client, token_for)

    for user, ice_servers in servers.items():  # the hub minted a TURN credential per user
        assert [s["urls"] for s in ice_servers] == [[turn_url(coturn)]]
        assert ice_servers[0]["username"].endswith(f":{user}")

    alice = relay_only_client("alice", servers["alice"])
    bob = relay_only_client("bob", servers["bob"])
    logged_before = len(coturn.log())
    try:
        offers = {"alice": await alice.offer(), "bob": await bob.offer()}
        relay_ports = range(coturn.settings.min_port, coturn.settings.max_port + 1)
        for user, offer in offers.items():
            found = candidates(offer)
            # Only coturn's relayed addresses: nothing else can carry this client's media.
            assert found, f"{user} gathered no candidate: {coturn.log()[-2000:]}"
            assert all(kind == "relay" for _, _, kind in found), found
            assert all(host == coturn.address[0] and port in relay_ports for host, port, _ in found)
            assert " typ host" not in offer and " typ srflx" not in offer

        await negotiate(alice_ws, alice, cid, offers["alice"])
        await negotiate(bob_ws, bob, cid, offers["bob"])

        def flowing() -> bool:
            return all(c.frames("video") >= 10 and c.frames("audio") >= 10 for c in (alice, bob))

        await until(flowing, 20, "each client to decode the other's audio and video via TURN")
        assert alice.pc.connectionState == bob.pc.connectionState == "connected"
        for client, offer in zip((alice, bob), offers.values(), strict=True):
            # The pair in use (one, bundled) sends from a relayed address coturn allocated.
            selected = selected_local_candidates(client)
            assert len(selected) == 1 and selected[0] in candidates(offer), selected

        # coturn's side: each user's minted credential allocated a relay and bound a channel
        # to a peer (the SFU) through which the media above went.
        for ice_servers in servers.values():
            user = rf"user <{re.escape(ice_servers[0]['username'])}>: incoming packet"
            await logged(coturn, logged_before, rf"{user} ALLOCATE processed, success")
            await logged(coturn, logged_before, rf"{user} CHANNEL_BIND processed, success")
    finally:
        await asyncio.gather(alice.close(), bob.close())


@pytest.mark.parametrize("spoiled", ["forged", "expired"])
async def test_forged_or_expired_turn_credential_gets_no_relay_and_no_media(
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
    coturn: Coturn,
    spoiled: str,
) -> None:
    settings = make_settings(media=SFU_ON_LOOPBACK, turn=turn_settings(coturn))
    app_client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    alice_ws, bob_ws, servers, cid = await start_call(app_client, token_for)

    real = servers["alice"][0]
    if spoiled == "forged":  # alice's username, a password not made with coturn's secret
        bad = {**real, "credential": password_for(b"not the secret", real["username"])}
    else:  # made with the right secret, but it expired an hour ago
        old = mint(coturn.secret, "alice", ttl_s=60, now=time.time() - 3600)
        bad = {**real, "username": old.username, "credential": old.password}
    alice = relay_only_client("alice", [bad])
    bob = relay_only_client("bob", servers["bob"])
    try:
        logged_before = len(coturn.log())
        offer = await alice.offer()
        assert candidates(offer) == [], "a relay-only client without a valid credential"
        # Only this test's part of the log: an earlier test may have used the same username.
        user = rf"user <{re.escape(bad['username'])}>: incoming packet \w+ processed"
        await logged(coturn, logged_before, rf"{user}, error 401: Unauthorized")

        await negotiate(alice_ws, alice, cid, offer)
        await negotiate(bob_ws, bob, cid, await bob.offer())
        await until(lambda: bob.pc.connectionState == "connected", 10, "bob to reach the SFU")
        # bob's leg is up and forwarding: whatever alice's leg carried would show by now.
        await asyncio.sleep(1.5)
        # With no local candidate aiortc never even starts ICE: alice's connection stays new.
        assert alice.pc.iceConnectionState == alice.pc.connectionState == "new"
        assert selected_local_candidates(alice) == []
        assert alice.frames("video") == alice.frames("audio") == 0
        assert bob.frames("video") == bob.frames("audio") == 0
        assert not re.search(rf"{user}, success", coturn.log()[logged_before:])
    finally:
        await asyncio.gather(alice.close(), bob.close())
