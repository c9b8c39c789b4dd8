"""A paid call through the SFU with its parties on two nodes (issue 10): media is pinned to
the SFU of the node that runs the call, so the host on the other node has his offer
forwarded there and his peer connection goes to that node. Real aiortc peers on 127.0.0.1,
real Redis and PostgreSQL; both decode each other, and both peer connections close when the
money runs out."""

from __future__ import annotations

import uuid
from typing import Any

from signalling.app import create_app
from signalling.keys import LEDGER, SFU
from tests.conftest import MakeSettings, MakeToken
from tests.contract.ledger.books import fresh_database
from tests.integration.services import forget_prefix, require_redis
from tests.integration.test_sfu_hub import SFU_ON_LOOPBACK, negotiate
from tests.mediautil import LoopbackClient
from tests.wsutil import recv, until

AiohttpClient = Any


async def test_media_of_a_call_across_nodes_goes_through_the_owners_sfu(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with fresh_database() as dsn:
        prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
        common: dict[str, Any] = {
            "redis_url": require_redis(),
            "database_url": dsn,
            "presence": {"key_prefix": prefix},
            "media": SFU_ON_LOOPBACK | {"connect_timeout_s": 5},
            "billing": {"minute_seconds": 1, "loop_interval_s": 0.05, "default_rate": 7},
        }
        app_a = create_app(make_settings(node_id="node-a", **common))
        app_b = create_app(make_settings(node_id="node-b", **common))
        a, b = await aiohttp_client(app_a), await aiohttp_client(app_b)
        admin = {"Authorization": "Bearer " + token_for("root", "admin")}
        body = {"user_id": "alice", "amount": 35, "idempotency_key": "k"}  # 5 minutes
        assert (await a.post("/v1/admin/credit", json=body, headers=admin)).status == 200

        alice_ws = await a.ws_connect("/v1/ws?token=" + token_for("alice"))
        bob_ws = await b.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        assert (await recv(alice_ws, "welcome"))["media"] == "sfu"
        assert (await recv(bob_ws, "welcome"))["media"] == "sfu"
        await alice_ws.send_json({"type": "call.invite", "id": "1", "to": "bob"})
        cid = (await recv(alice_ws, "ack"))["call_id"]
        await bob_ws.send_json({"type": "call.accept", "call_id": cid})
        await recv(alice_ws, "call.started")
        assert (await recv(bob_ws, "call.started"))["media"] == "sfu"

        alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
        try:
            await negotiate(alice_ws, alice, cid)
            await negotiate(bob_ws, bob, cid)  # answered by node A's SFU, through the bus
            assert (await recv(bob_ws, "ack"))["id"] == "o"

            def flowing() -> bool:
                return all(
                    c.frames("video") >= 10 and c.frames("audio") >= 10 for c in (alice, bob)
                )

            await until(flowing, 15, "each client to decode the other's audio and video")
            # Both legs are on node A's SFU; node B's SFU has none.
            media = app_a[SFU].call(cid)
            assert media is not None and set(media.legs) == {"alice", "bob"}
            assert app_b[SFU].call(cid) is None

            ended = await recv(bob_ws, "call.ended", within_s=10)
            assert ended["reason"] == "insufficient_balance" and ended["minutes"] == 5
            await until(
                lambda: all(
                    c.ended() or c.pc.connectionState in ("closed", "failed") for c in (alice, bob)
                ),
                2.0,
                "both peer connections to be closed by the server",
            )
        finally:
            await alice.close()
            await bob.close()
        assert await app_a[LEDGER].check() == []
        await a.close()
        await b.close()
        await forget_prefix(prefix)
