"""The access matrix: every REST route and every WebSocket message type against every kind
of bad credential and every kind of wrong caller, with the refusal docs/api.md and
docs/protocol.md promise. The rows come from the app's own route table and the protocol's
message list: a route or message type missing from the tables below fails the test.

The deployment under test is a production-shaped one: RS256 with a public key, a required
audience and issuer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from signalling.app import create_app
from signalling.protocol import CLIENT_MESSAGES
from tests.conftest import MakeSettings
from tests.wsutil import recv

AiohttpClient = Any
AUDIENCE, ISSUER = "jalwa-app", "https://auth.example"
REFUSALS: Counter[str] = Counter()  # per row, for docs/security.md


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Keys:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def claims(self, user: str, role: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"sub": user, "role": role, "name": user, "iat": now, "exp": now + 600,
                "aud": AUDIENCE, "iss": ISSUER, **extra}  # fmt: skip

    def good(self, user: str, role: str = "caller") -> str:
        return jwt.encode(self.claims(user, role), self.private, algorithm="RS256")

    def bad(self) -> Iterator[tuple[str, str]]:
        """(row name, token) for every credential that must be refused."""
        yield "no token", ""
        yield "garbage", "not.a.jwt"
        yield (
            "expired",
            jwt.encode(
                self.claims("alice", "caller", exp=int(time.time()) - 3600), self.private, "RS256"
            ),
        )
        yield (
            "not yet valid",
            jwt.encode(
                self.claims("alice", "caller", nbf=int(time.time()) + 3600), self.private, "RS256"
            ),
        )
        yield "wrong key", jwt.encode(self.claims("alice", "caller"), self.wrong, "RS256")
        body = _b64(json.dumps(self.claims("alice", "admin")).encode())
        yield "alg none", _b64(b'{"alg":"none","typ":"JWT"}') + "." + body + "."
        # HS256 signed with the server's PUBLIC key as the secret: the classic confusion.
        head = _b64(b'{"alg":"HS256","typ":"JWT"}')
        mac = hmac.new(self.public_pem.encode(), f"{head}.{body}".encode(), hashlib.sha256)
        yield "HS/RS confusion", f"{head}.{body}.{_b64(mac.digest())}"
        yield (
            "wrong audience",
            jwt.encode(self.claims("alice", "caller", aud="other-app"), self.private, "RS256"),
        )
        yield (
            "wrong issuer",
            jwt.encode(
                self.claims("alice", "caller", iss="https://evil.example"), self.private, "RS256"
            ),
        )
        no_aud = self.claims("alice", "caller")
        del no_aud["aud"]
        yield "no audience", jwt.encode(no_aud, self.private, "RS256")
        yield "bad role claim", jwt.encode(self.claims("alice", "root"), self.private, "RS256")
        yield "bad user id", jwt.encode(self.claims("a b", "caller"), self.private, "RS256")


# Every route of the app: who may call it. "any" = any valid token; None = no token needed.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/"): None,
    ("GET", "/app/{name}"): None,
    ("GET", "/console"): None,
    ("GET", "/healthz"): None,
    ("GET", "/v1/dev/token"): None,  # development only, loopback only: not in this app
    ("GET", "/v1/ws"): "websocket",
    ("GET", "/v1/wallet"): "any",
    ("GET", "/v1/wallet/entries"): "any",
    ("POST", "/v1/wallet/recharge"): "any",
    ("GET", "/v1/calls"): "any",
    ("GET", "/v1/gifts"): "any",
    ("GET", "/v1/hosts"): "any",
    ("GET", "/v1/conversations"): "any",
    ("GET", "/v1/conversations/{conversation_id}/messages"): "any",
    ("POST", "/v1/withdrawals"): "host",
    ("GET", "/v1/withdrawals"): "host",
    ("POST", "/v1/admin/credit"): "admin",
    ("PUT", "/v1/admin/hosts/{host}/rate"): "admin",
    ("PUT", "/v1/admin/gifts/{gift_id}"): "admin",
    ("GET", "/v1/admin/withdrawals"): "admin",
    ("POST", "/v1/admin/withdrawals/{wid}/approve"): "admin",
    ("POST", "/v1/admin/withdrawals/{wid}/reject"): "admin",
    ("POST", "/v1/admin/calls/{call_id}/end"): "admin",
    ("GET", "/v1/admin/recordings"): "admin",
    ("GET", "/v1/admin/recordings/{call_id}/{party}"): "admin",
    ("GET", "/v1/admin/stats"): "admin",
    ("GET", "/v1/admin/calls/active"): "admin",
    ("GET", "/v1/admin/users/{user_id}"): "admin",
    ("PUT", "/v1/admin/users/{user_id}/ban"): "admin",
    ("DELETE", "/v1/admin/users/{user_id}/ban"): "admin",
    ("GET", "/admin"): "admin page",  # the token in ?token= (a browser opens it)
    ("GET", "/v1/openapi.json"): None,
    ("GET", "/metrics"): None,
    ("GET", "/readyz"): None,
    ("GET", "/jalwa.js"): None,
}
ROLES = ("caller", "host", "admin")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, keys: Keys
) -> TestClient[Any, Any]:
    settings = make_settings(
        env="production",
        redis_url=None,
        auth={"algorithm": "RS256", "public_key": keys.public_pem,
              "audience": AUDIENCE, "issuer": ISSUER},
    )  # fmt: skip
    # Production mode wants real stores; the matrix is about the edge, so build the app as
    # production would see tokens but on the embedded stores.
    dev = settings.model_copy(update={"env": "development"})
    return await aiohttp_client(create_app(dev))  # type: ignore[no-any-return]


def _routes(client: TestClient[Any, Any]) -> list[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str), info
        found.add((route.method, path))
    return sorted(found)


def _concrete(path: str) -> str:
    return (
        path.replace("{conversation_id}", "dm:alice:bob")
        .replace("{host}", "bob")
        .replace("{gift_id}", "rose")
        .replace("{wid}", "1")
        .replace("{call_id}", "c_x")
        .replace("{party}", "alice")
        .replace("{user_id}", "alice")
        .replace("{name}", "app.js")
    )


async def test_every_route_is_in_the_matrix(client: TestClient[Any, Any]) -> None:
    assert set(_routes(client)) <= set(ROUTES), set(_routes(client)) - set(ROUTES)


async def test_rest_refuses_every_bad_credential_and_wrong_role(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    for method, path in _routes(client):
        who = ROUTES[(method, path)]
        if who is None or who in ("websocket", "admin page"):
            continue
        url = _concrete(path)
        for row, token in keys.bad():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            resp = await client.request(method, url, headers=headers, data=b"{}")
            body = await resp.json()
            assert resp.status == 401, (row, method, path, resp.status, body)
            assert body["error"] in ("token_missing", "token_invalid", "token_expired"), body
            REFUSALS[f"REST {row}"] += 1
        for role in ROLES:
            if who in ("any", role):
                continue
            resp = await client.request(
                method, url, headers={"Authorization": f"Bearer {keys.good('u1', role)}"}
            )
            assert resp.status == 403, (role, method, path, resp.status)
            assert (await resp.json())["error"] == "forbidden"
            REFUSALS["REST wrong role"] += 1


async def test_rest_refuses_what_is_not_yours(client: TestClient[Any, Any], keys: Keys) -> None:
    """Another pair's conversation, another user's recharge receipt, another host's
    withdrawal (hosts only see their own)."""
    auth = {"Authorization": f"Bearer {keys.good('mallory')}"}
    resp = await client.get("/v1/conversations/dm:alice:bob/messages", headers=auth)
    assert resp.status == 403 and (await resp.json())["error"] == "chat_forbidden"
    REFUSALS["REST not a participant"] += 1
    host = {"Authorization": f"Bearer {keys.good('evil_host', 'host')}"}
    listed = await (await client.get("/v1/withdrawals", headers=host)).json()
    assert listed == {"withdrawals": []}
    REFUSALS["REST not your withdrawal"] += 1


async def test_websocket_refuses_every_bad_credential(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    for row, token in keys.bad():
        ws = await client.ws_connect(f"/v1/ws?token={token}")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4001), (row, msg)
        assert msg.extra in ("token_missing", "token_invalid", "token_expired"), (row, msg)
        REFUSALS[f"WS {row}"] += 1


# What a stranger (a user in no call, no conversation) gets for each message type that
# names something of someone else's; None: the message names nothing of anyone's.
NOT_YOURS: dict[str, tuple[dict[str, Any], str] | None] = {
    "presence.update": None,
    "presence.watch": None,  # presence is public by design (docs/protocol.md §4.2)
    "presence.unwatch": None,
    "call.invite": ({"to": "bob"}, "callee_busy"),  # bob is in alice's call
    "call.accept": ({}, "call_not_found"),
    "call.reject": ({}, "call_not_found"),
    "call.cancel": ({}, "call_not_found"),
    "call.end": ({}, "call_not_found"),
    "rtc.offer": ({"sdp": "v=0"}, "call_not_found"),
    "rtc.answer": ({"sdp": "v=0"}, "call_not_found"),
    "rtc.ice": ({"candidate": "candidate:1"}, "call_not_found"),
    "gift.send": ({"to": "bob", "gift_id": "rose", "idempotency_key": "k"}, "call_not_found"),
    "chat.send": None,  # anyone may write to anyone who has not blocked them
    "chat.delivered": ({"message_ids": ["@MSG@"]}, "ignored"),
    "chat.read": ({"message_ids": ["@MSG@"]}, "ignored"),
    "chat.typing": None,
    "chat.history": ({"conversation_id": "dm:alice:bob"}, "chat_forbidden"),
    "chat.block": None,
    "chat.unblock": None,
    "match.request": None,  # names nobody: a queue of one's own
    "match.cancel": None,
    "match.next": None,
}


async def test_websocket_refuses_what_is_not_yours(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    tags = {m.__struct_config__.tag for m in CLIENT_MESSAGES}
    assert tags == set(NOT_YOURS), tags ^ set(NOT_YOURS)
    admin = {"Authorization": f"Bearer {keys.good('root', 'admin')}"}
    await client.post(
        "/v1/admin/credit",
        json={"user_id": "alice", "amount": 100, "idempotency_key": "k"},
        headers=admin,
    )
    await client.put("/v1/admin/gifts/rose", json={"name": "Rose", "price": 1}, headers=admin)
    alice = await client.ws_connect(f"/v1/ws?token={keys.good('alice')}")
    bob = await client.ws_connect(f"/v1/ws?token={keys.good('bob', 'host')}")
    mallory = await client.ws_connect(f"/v1/ws?token={keys.good('mallory')}")
    for ws in (alice, bob, mallory):
        await recv(ws, "welcome")
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await bob.send_json({"type": "call.accept", "call_id": cid})
    await recv(alice, "call.started")
    await alice.send_json(
        {"type": "chat.send", "id": "m", "to": "bob", "client_msg_id": "c", "text": "hi"}
    )
    msg_id = (await recv(alice, "ack"))["message"]["id"]
    for tag, row in NOT_YOURS.items():
        if row is None:
            continue
        fields, code = row
        frame = {"type": tag, "id": tag, "call_id": cid, **fields}
        if "message_ids" in fields:
            frame["message_ids"] = [msg_id]
        await mallory.send_json(frame)
        reply = await recv(mallory, "ack" if code == "ignored" else "error")
        assert reply["id"] == tag, reply
        if code != "ignored":
            assert reply["code"] == code, (tag, reply)
        REFUSALS[f"WS not yours: {tag}"] += 1
    # Marking someone else's message changed nothing: alice got no receipt from mallory.
    await alice.send_json({"type": "presence.update", "id": "z", "status": "available"})
    while (frame := await alice.receive_json(timeout=5))["type"] != "ack":
        assert frame["type"] != "chat.receipt", frame
    # The call is untouched by all of it.
    await alice.send_json({"type": "call.end", "id": "e", "call_id": cid})
    assert (await recv(bob, "call.ended"))["reason"] == "hangup"


async def test_the_admin_page_refuses_every_bad_credential_and_wrong_role(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    for row, token in keys.bad():
        resp = await client.get("/admin", params={"token": token})
        assert resp.status == 401, (row, resp.status)
        REFUSALS[f"admin page {row}"] += 1
    for role in ("caller", "host"):
        resp = await client.get("/admin", params={"token": keys.good("u1", role)})
        assert resp.status == 403, (role, resp.status)
        REFUSALS["admin page wrong role"] += 1
    assert (await client.get("/admin", params={"token": keys.good("root", "admin")})).status == 200


async def test_a_banned_user_is_refused_on_every_surface(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    admin = {"Authorization": f"Bearer {keys.good('root', 'admin')}"}
    # mallory has a session; dropped (not closed: 4000), it is parked with a resume token.
    ws = await client.ws_connect(f"/v1/ws?token={keys.good('mallory')}")
    resume = (await recv(ws, "welcome"))["resume_token"]
    await ws.close(code=4000)
    resp = await client.put("/v1/admin/users/mallory/ban", json={"reason": "x"}, headers=admin)
    assert resp.status == 200
    for query in ("", f"&resume={resume}&last_seq=1"):
        ws = await client.ws_connect(f"/v1/ws?token={keys.good('mallory')}{query}")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4003, "banned"), msg
        REFUSALS["WS banned" + (" (resume)" if query else "")] += 1
    for role, path in (("caller", "/v1/wallet"), ("host", "/v1/withdrawals")):
        resp = await client.get(
            path, headers={"Authorization": f"Bearer {keys.good('mallory', role)}"}
        )
        assert resp.status == 403 and (await resp.json())["error"] == "banned", path
        REFUSALS["REST banned"] += 1
    # Lifted: in again.
    assert (await client.delete("/v1/admin/users/mallory/ban", headers=admin)).status == 200
    ws = await client.ws_connect(f"/v1/ws?token={keys.good('mallory')}")
    await recv(ws, "welcome")
    await ws.close()


async def test_someone_elses_resume_token_resumes_nothing(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    alice = await client.ws_connect(f"/v1/ws?token={keys.good('alice')}")
    resume = (await recv(alice, "welcome"))["resume_token"]
    await alice.send_json({"type": "presence.update", "id": "u", "status": "away"})
    await recv(alice, "ack")
    await alice.close(code=4000)  # dropped: parked for alice's resume
    mallory = await client.ws_connect(
        f"/v1/ws?token={keys.good('mallory')}&resume={resume}&last_seq=1"
    )
    welcome = await recv(mallory, "welcome")
    assert not welcome.get("resumed")
    assert (await recv(mallory, "error"))["code"] == "resync_required"
    REFUSALS["WS someone else's resume token"] += 1
    # alice's own resume still works: mallory took nothing.
    back = await client.ws_connect(f"/v1/ws?token={keys.good('alice')}&resume={resume}&last_seq=1")
    assert (await recv(back, "welcome")).get("resumed")
    for ws in (mallory, back):
        await ws.close()


def test_zz_report_the_refusals() -> None:
    print(f"\naccess matrix refusals: {dict(sorted(REFUSALS.items()))}")
    assert REFUSALS
