"""Billing through the hub and the REST API on the embedded ledger, with a 1 s minute."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from billing.receipts import sign
from signalling.app import create_app
from signalling.http.rest import SIGNATURE_HEADER
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv

AiohttpClient = Any
RECHARGE_SECRET = "r" * 32
FAST = {
    "minute_seconds": 1,
    "loop_interval_s": 0.05,
    "default_rate": 7,
    "low_balance_minutes": 2,
    "recharge_secret": RECHARGE_SECRET,
    "orphan_after_s": 2,
}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(make_settings(billing=FAST, presence={"node_ttl_s": 1}))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    yield client
    assert await app[LEDGER].check() == []  # the books balance after every test


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def credit(
    client: TestClient[Any, Any], admin: str, user: str, amount: int, key: str
) -> None:
    resp = await client.post(
        "/v1/admin/credit",
        json={"user_id": user, "amount": amount, "idempotency_key": key},
        headers=auth(admin),
    )
    assert resp.status == 200, await resp.text()


async def test_call_is_billed_per_minute_until_money_runs_out(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    admin = token_for("root", "admin")
    await credit(client, admin, "alice", 20, "k1")
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    started = await recv(alice, "call.started")
    assert (started["rate"], started["balance"]) == (7, 13)  # minute 1 is prepaid
    tick = await recv(alice, "billing.tick")
    assert (tick["minute"], tick["charged"], tick["balance"]) == (2, 7, 6)
    assert (await recv(alice, "wallet.balance"))["wallet"] == 6
    assert (await recv(alice, "billing.low_balance"))["minutes_left"] == 0
    for ws in (alice, bob):
        ended = await recv(ws, "call.ended")
        assert (ended["reason"], ended["minutes"], ended["coins"]) == (
            "insufficient_balance",
            2,
            14,
        )
    wallet = await (await client.get("/v1/wallet", headers=auth(token_for("bob", "host")))).json()
    assert wallet == {"wallet": 0, "earnings": 6, "withdrawal_pending": 0}  # floor(3.5) x 2
    mine = await (await client.get("/v1/wallet", headers=auth(token_for("alice")))).json()
    assert mine["wallet"] == 6
    calls = await (await client.get("/v1/calls", headers=auth(token_for("alice")))).json()
    assert [(c["call_id"], c["minutes"], c["coins"], c["end_reason"]) for c in calls["calls"]] == [
        (cid, 2, 14, "insufficient_balance")
    ]


async def test_a_call_that_starts_low_is_warned_at_once(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    await credit(client, token_for("root", "admin"), "alice", 14, "k1")
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    assert (await recv(alice, "call.started"))["balance"] == 7
    # 7 coins pay 1 more minute, fewer than low_balance_minutes (2): warned with the start,
    # before the first tick.
    frame = await alice.receive_json()
    assert (frame["type"], frame["call_id"], frame["minutes_left"]) == (
        "billing.low_balance",
        cid,
        1,
    )
    assert (await recv(alice, "billing.tick"))["minute"] == 2
    assert (await recv(alice, "call.ended"))["reason"] == "insufficient_balance"


async def test_hangup_stops_billing(client: TestClient[Any, Any], token_for: MakeToken) -> None:
    await credit(client, token_for("root", "admin"), "alice", 100, "k1")
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    await recv(alice, "call.started")
    await bob.send_json({"type": "call.end", "call_id": cid})
    ended = await recv(alice, "call.ended")
    assert (ended["reason"], ended["minutes"], ended["coins"]) == ("hangup", 1, 7)


async def test_live_calls_are_kept_alive_past_the_orphan_timeout(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    await credit(client, token_for("root", "admin"), "alice", 100, "k1")
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    await recv(alice, "call.started")
    minutes = [(await recv(alice, "billing.tick"))["minute"] for _ in range(3)]
    assert minutes == [2, 3, 4]  # 3 s > orphan_after_s: the keepalive holds the call
    await alice.send_json({"type": "call.end", "call_id": cid})
    assert (await recv(alice, "call.ended"))["reason"] == "hangup"


async def test_no_money_no_call(client: TestClient[Any, Any], token_for: MakeToken) -> None:
    alice = await connect(client, token_for("alice"))
    await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    err = await recv(alice, "error")
    assert (err["id"], err["code"]) == ("1", "insufficient_balance")


async def test_gifts(client: TestClient[Any, Any], token_for: MakeToken) -> None:
    admin = token_for("root", "admin")
    resp = await client.put(
        "/v1/admin/gifts/rose", json={"name": "Rose", "price": 5}, headers=auth(admin)
    )
    assert resp.status == 200
    await credit(client, admin, "alice", 12, "k1")
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    gift = {"type": "gift.send", "to": "bob", "gift_id": "rose", "idempotency_key": "g1"}
    await alice.send_json({**gift, "id": "1"})
    first = await recv(alice, "ack")
    assert first["balance"] == 7
    got = await recv(bob, "gift.received")
    assert (got["from"]["id"], got["coins"]) == ("alice", 2)  # floor(5 * 50%)
    assert got["entry_id"] == first["entry_id"]
    assert (await recv(bob, "wallet.balance"))["earnings"] == 2
    await alice.send_json({**gift, "id": "2"})  # a retry: acked, nothing moves
    retry = await recv(alice, "ack")
    assert (retry["balance"], retry["entry_id"]) == (7, first["entry_id"])
    await alice.send_json({**gift, "id": "3", "idempotency_key": "g2"})
    second = await recv(alice, "ack")
    assert second["balance"] == 2
    # The host heard of the retry not at all: its next frames are the second gift's.
    assert [(f["type"], f.get("entry_id")) for f in [await bob.receive_json() for _ in "ab"]] == [
        ("gift.received", second["entry_id"]),
        ("wallet.balance", None),
    ]
    await alice.send_json({**gift, "id": "4", "idempotency_key": "g3"})
    assert (await recv(alice, "error"))["code"] == "insufficient_balance"
    await alice.send_json({**gift, "id": "5", "gift_id": "tulip", "idempotency_key": "g4"})
    assert (await recv(alice, "error"))["code"] == "unknown_gift"
    await alice.send_json({**gift, "id": "6", "to": "alice", "idempotency_key": "g5"})
    assert (await recv(alice, "error"))["code"] == "forbidden"
    gifts = await (await client.get("/v1/gifts", headers=auth(token_for("alice")))).json()
    assert gifts["gifts"] == [{"gift_id": "rose", "name": "Rose", "price": 5, "active": True}]


def receipt(user: str, amount: object, txn: str = "t1") -> bytes:
    return b'{"provider":"payu","txn_id":"%s","user_id":"%s","amount":%s}' % (
        txn.encode(),
        user.encode(),
        str(amount).encode(),
    )


async def recharge(
    client: TestClient[Any, Any], token: str, body: bytes, sig: str | None = None
) -> Any:
    headers = {**auth(token), SIGNATURE_HEADER: sig or sign(RECHARGE_SECRET.encode(), body)}
    return await client.post("/v1/wallet/recharge", data=body, headers=headers)


async def test_recharge_receipts(client: TestClient[Any, Any], token_for: MakeToken) -> None:
    alice = token_for("alice")
    resp = await recharge(client, alice, receipt("alice", 50))
    assert resp.status == 200 and (await resp.json())["wallet"] == 50
    again = await recharge(client, alice, receipt("alice", 50))
    assert again.status == 200 and (await again.json())["wallet"] == 50  # replay: no change
    other = await recharge(client, alice, receipt("alice", 500))
    assert other.status == 409 and (await other.json())["error"] == "idempotency_conflict"
    forged = await recharge(client, alice, receipt("alice", 500, "t2"), sig="00" * 32)
    assert forged.status == 400 and (await forged.json())["error"] == "bad_receipt"
    theirs = await recharge(client, alice, receipt("bob", 5, "t3"))
    assert theirs.status == 403
    for bad in (0, -5, 2.5, '"7"', 10**12):
        resp = await recharge(client, alice, receipt("alice", bad, f"t-{bad}"))
        assert resp.status == 400, (bad, await resp.text())
    wallet = await (await client.get("/v1/wallet", headers=auth(alice))).json()
    assert wallet["wallet"] == 50
    entries = await (await client.get("/v1/wallet/entries", headers=auth(alice))).json()
    assert [(e["kind"], e["wallet_delta"]) for e in entries["entries"]] == [("recharge", 50)]


async def test_withdrawals_and_admin_rules(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    admin, bob, alice = token_for("root", "admin"), token_for("bob", "host"), token_for("alice")
    await client.put(
        "/v1/admin/gifts/rose", json={"name": "Rose", "price": 10}, headers=auth(admin)
    )
    await credit(client, admin, "alice", 10, "k1")
    ws = await connect(client, alice)
    await connect(client, bob)
    await ws.send_json(
        {"type": "gift.send", "id": "1", "to": "bob", "gift_id": "rose", "idempotency_key": "g"}
    )
    await recv(ws, "ack")  # bob earned 5

    too_much = await client.post(
        "/v1/withdrawals", json={"amount": 6, "idempotency_key": "w0"}, headers=auth(bob)
    )
    assert too_much.status == 402
    resp = await client.post(
        "/v1/withdrawals", json={"amount": 4, "idempotency_key": "w1"}, headers=auth(bob)
    )
    assert resp.status == 201
    wid = (await resp.json())["id"]
    assert (
        await client.post(
            "/v1/withdrawals", json={"amount": 4, "idempotency_key": "w1"}, headers=auth(alice)
        )
    ).status == 403  # callers have no earnings
    for body in (
        {"amount": 0, "idempotency_key": "x"},
        {"amount": 1.5, "idempotency_key": "x"},
        {"amount": "3", "idempotency_key": "x"},
        {"amount": 1},
    ):
        r = await client.post("/v1/withdrawals", json=body, headers=auth(bob))
        assert r.status == 400, body
    assert (
        await client.post(f"/v1/admin/withdrawals/{wid}/approve", headers=auth(bob))
    ).status == 403
    ok = await client.post(f"/v1/admin/withdrawals/{wid}/approve", headers=auth(admin))
    assert ok.status == 200 and (await ok.json())["state"] == "paid"
    twice = await client.post(f"/v1/admin/withdrawals/{wid}/approve", headers=auth(admin))
    assert twice.status == 409
    late = await client.post(f"/v1/admin/withdrawals/{wid}/reject", headers=auth(admin))
    assert late.status == 409
    assert (
        await client.post("/v1/admin/withdrawals/999/approve", headers=auth(admin))
    ).status == 404
    wallet = await (await client.get("/v1/wallet", headers=auth(bob))).json()
    assert wallet == {"wallet": 0, "earnings": 1, "withdrawal_pending": 0}
    assert (await client.get("/v1/wallet")).status == 401
    assert (await client.get("/v1/wallet", headers=auth("nope"))).status == 401
    bad_credit = await client.post(
        "/v1/admin/credit",
        json={"user_id": "alice", "amount": -1, "idempotency_key": "k"},
        headers=auth(admin),
    )
    assert bad_credit.status == 400
