"""A paid call through the SFU with its parties on two nodes (issue 10): media is pinned to
the SFU of the node that runs the call, so the host on the other node has his offer
forwarded there and his peer connection goes to that node. Real aiortc peers on 127.0.0.1,
real Redis and PostgreSQL; both decode each other, and both peer connections close when the
money runs out."""

from __future__ import annotations

from typing import Any

from signalling.keys import SFU
from tests.conftest import MakeSettings, MakeToken
from tests.integration.test_cross_node_calls import cluster
from tests.integration.test_sfu_hub import SFU_ON_LOOPBACK, negotiate
from tests.mediautil import LoopbackClient
from tests.wsutil import recv, until

AiohttpClient = Any


async def test_media_of_a_call_across_nodes_goes_through_the_owners_sfu(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(
        aiohttp_client,
        make_settings,
        token_for,
        credits={"alice": 35},  # 5 minutes
        media=SFU_ON_LOOPBACK | {"connect_timeout_s": 5},
        billing={"minute_seconds": 1, "loop_interval_s": 0.05, "default_rate": 7},
        hub={},
    ) as nodes:
        alice_ws = await nodes.join(nodes.a, "alice")
        bob_ws = await nodes.join(nodes.b, "bob", "host")
        assert alice_ws.welcome["media"] == bob_ws.welcome["media"] == "sfu"
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
            media = nodes.a.app[SFU].call(cid)
            assert media is not None and set(media.legs) == {"alice", "bob"}
            assert nodes.b.app[SFU].call(cid) is None

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
