"""What `jalwa serve` logs: JSON lines (log_json) with the node, the user and the call bound,
and never a token, a secret, a receipt signature or chat text, even at debug level."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from billing.receipts import sign
from tests.integration.processes import serve
from tests.wsutil import recv

AUTH_SECRET = "jwt-" + "a1" * 20
TURN_SECRET = "turn-" + "b2" * 20
RECHARGE_SECRET = "rc-" + "c3" * 20
CHAT_TEXT = "the-chat-text-nobody-logs-7f3a"


def read_logs(folder: Path) -> str:
    return "\n".join(p.read_text() for p in folder.glob("serve-*.log"))


async def test_log_lines_bind_context_and_hold_no_secret(tmp_path: Path) -> None:
    env = {
        "JALWA_LOG_JSON": "true",
        "JALWA_LOG_LEVEL": "debug",
        "JALWA_NODE_ID": "node-logs",
        "JALWA_AUTH__SECRET": AUTH_SECRET,
        "JALWA_TURN__SECRET": TURN_SECRET,
        "JALWA_TURN__URLS": '["turn:127.0.0.1:3478"]',
        "JALWA_BILLING__RECHARGE_SECRET": RECHARGE_SECRET,
        "JALWA_BILLING__DEFAULT_RATE": "5",
    }
    secrets: list[str] = [AUTH_SECRET, TURN_SECRET, RECHARGE_SECRET, CHAT_TEXT]
    with serve(tmp_path, **env) as server:
        tokens = {
            "alice": server.token("alice", "caller"),
            "bob": server.token("bob", "host"),
        }
        secrets += tokens.values()
        async with aiohttp.ClientSession() as http:
            receipt = json.dumps(
                {"provider": "play", "txn_id": "t1", "user_id": "alice", "amount": 50}
            ).encode()
            signature = sign(RECHARGE_SECRET.encode(), receipt)
            secrets.append(signature)
            async with http.post(
                server.url + "/v1/wallet/recharge",
                data=receipt,
                headers={
                    "Authorization": f"Bearer {tokens['alice']}",
                    "X-Jalwa-Signature": signature,
                },
            ) as resp:
                assert resp.status == 200, await resp.text()
            # Refused credentials are not logged either.
            bad = tokens["alice"][:-4] + "AAAA"
            secrets.append(bad)
            refused = await http.ws_connect(f"{server.url}/v1/ws?token={bad}")
            await refused.receive(timeout=5)
            async with http.get(
                server.url + "/v1/wallet", headers={"Authorization": f"Bearer {bad}"}
            ) as resp:
                assert resp.status == 401
            alice = await http.ws_connect(f"{server.url}/v1/ws?token={tokens['alice']}")
            bob = await http.ws_connect(f"{server.url}/v1/ws?token={tokens['bob']}")
            welcome = await recv(alice, "welcome")
            await recv(bob, "welcome")
            secrets += [s["credential"] for s in welcome["ice_servers"] if s.get("credential")]
            secrets.append(welcome["resume_token"])
            await alice.send_json(
                {
                    "type": "chat.send",
                    "id": "m",
                    "to": "bob",
                    "client_msg_id": "c",
                    "text": CHAT_TEXT,
                }
            )
            await recv(alice, "ack")
            await recv(bob, "chat.message")
            await alice.send_json({"type": "call.invite", "id": "i", "to": "bob"})
            cid = (await recv(alice, "ack"))["call_id"]
            await bob.send_json({"type": "call.accept", "call_id": cid})
            await recv(alice, "call.started")
            await alice.send_json({"type": "call.end", "id": "e", "call_id": cid})
            await recv(bob, "call.ended")
            for ws in (alice, bob):
                await ws.close()
        await asyncio.sleep(0.3)  # the last lines reach the file
    text = await asyncio.to_thread(read_logs, tmp_path)
    lines: list[dict[str, Any]] = []
    for raw in text.splitlines():
        if raw.strip():
            lines.append(json.loads(raw))  # every line is a JSON object
    assert len(lines) > 5, text
    for secret in secrets:
        assert len(secret) >= 8
        assert secret not in text, f"a log line holds {secret[:6]}…"
    assert all(line.get("node") == "node-logs" for line in lines if line.get("event") != "stopping")
    assert any(line.get("user_id") == "alice" for line in lines), text
    started = [line for line in lines if line.get("event") == "call started"]
    assert [line["call_id"] for line in started] == [cid], text
    ended = [line for line in lines if line.get("event") == "call ended"]
    assert ended and ended[0]["call_id"] == cid and ended[0]["reason"] == "hangup", text
