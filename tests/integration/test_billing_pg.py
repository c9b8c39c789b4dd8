"""A real call through the hub, billed in real PostgreSQL with a 1 s minute."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from tests.conftest import MakeSettings, MakeToken
from tests.contract.ledger.books import fresh_database
from tests.wsutil import recv

AiohttpClient = Any
JALWA = str(Path(sys.executable).parent / "jalwa")


async def balance(conn: asyncpg.Connection[asyncpg.Record], owner: str, kind: str) -> int:
    value = await conn.fetchval(
        "SELECT balance FROM accounts WHERE owner = $1 AND kind = $2", owner, kind
    )
    return int(value or 0)


async def test_call_billed_in_postgres_until_money_runs_out(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with fresh_database(migrated=False) as dsn:
        settings = make_settings(
            database_url=dsn,
            migrate_on_start=True,
            billing={
                "minute_seconds": 1,
                "loop_interval_s": 0.05,
                "host_share_bps": 5000,
                "low_balance_minutes": 2,
            },
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
        admin = {"Authorization": "Bearer " + token_for("root", "admin")}
        resp = await client.put("/v1/admin/hosts/bob/rate", json={"rate": 7}, headers=admin)
        assert resp.status == 200
        resp = await client.post(
            "/v1/admin/credit",
            json={"user_id": "alice", "amount": 20, "idempotency_key": "topup-1"},
            headers=admin,
        )
        assert resp.status == 200

        alice = await client.ws_connect("/v1/ws?token=" + token_for("alice"))
        bob = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        for ws in (alice, bob):  # both sessions up before bob is rung
            await recv(ws, "welcome")
        await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        await bob.send_json({"type": "call.accept", "call_id": cid})
        started = await recv(alice, "call.started")
        assert (started["rate"], started["balance"]) == (7, 13)
        tick = await recv(alice, "billing.tick")
        assert (tick["minute"], tick["charged"], tick["balance"]) == (2, 7, 6)
        assert (await recv(alice, "billing.low_balance"))["minutes_left"] == 0
        for ws in (alice, bob):
            ended = await recv(ws, "call.ended")
            assert (ended["reason"], ended["minutes"], ended["coins"]) == (
                "insufficient_balance",
                2,
                14,
            )

        conn = await asyncpg.connect(dsn)
        try:
            assert await balance(conn, "alice", "wallet") == 6
            assert await balance(conn, "bob", "earnings") == 6  # floor(7 * 0.5) = 3, twice
            revenue = await conn.fetchval(
                "SELECT sum(balance) FROM accounts WHERE kind = 'revenue'"
            )
            assert revenue == 8  # the remainders: 4 + 4
            keys = await conn.fetch("SELECT key FROM journal WHERE key LIKE 'cm:%' ORDER BY key")
            assert [r["key"] for r in keys] == [f"cm:{cid}:1", f"cm:{cid}:2"]
        finally:
            await conn.close()
        await alice.close()
        await bob.close()

        check = await asyncio.create_subprocess_exec(
            JALWA,
            "ledger",
            "check",
            env={"JALWA_DATABASE_URL": dsn},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode == 0, out.decode()
        assert b"ledger ok" in out
