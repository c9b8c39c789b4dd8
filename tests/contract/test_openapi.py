"""The OpenAPI document at /v1/openapi.json against the app it describes.

- it is a valid OpenAPI 3.1 document (openapi-spec-validator);
- every route on the router has an operation and every operation is a route, so a route
  added without documenting it fails here;
- each operation's declared auth is what the route does (no token 401, a role it does not
  name 403), and what it answers a plain request is a declared status with a body its
  schema accepts;
- a scripted scenario (credit, gifts, chat, a call, withdrawals, a recharge) gets replies
  that validate against the declared schemas, with every object closed: a field the
  handler sends but the document does not declare fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate as validate_openapi

from billing.receipts import sign
from signalling.app import create_app
from signalling.auth import Role
from signalling.http.openapi import SPEC_PATH, Operation, Reply, add_operations
from signalling.http.rest import SIGNATURE_HEADER
from signalling.http.shapes import HostRate
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv

AiohttpClient = Any
Client = TestClient[Any, Any]
RECHARGE_SECRET = "s" * 32
ROLES = ("caller", "host", "admin")
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")

# Routes that are on the router but are not the REST surface, and why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("GET", "/v1/ws"): "the WebSocket upgrade: docs/protocol.md and protocol.schema.json",
    ("GET", "/v1/dev/token"): "development only, loopback only: not part of the API",
    ("GET", "/"): "the demo app (development only): HTML for people, not an API",
    ("GET", "/app/{name}"): "the demo app's modules and style sheet (development only)",
    ("GET", "/console"): "the protocol console (development only): HTML for people",
    ("GET", "/jalwa.js"): "the browser client module (docs/client.md): code, not an API",
}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[Client]:
    settings = make_settings(billing={"recharge_secret": RECHARGE_SECRET})
    app = create_app(settings)
    client: Client = await aiohttp_client(app)
    yield client
    assert await app[LEDGER].check() == []


@pytest.fixture
async def spec(client: Client) -> Spec:
    resp = await client.get(SPEC_PATH)  # public: no token
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return Spec(await resp.json())


def _closed(node: Any) -> Any:
    """A copy of a schema in which every object with declared properties allows no others."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class Spec:
    """The served document, with lookups and a reply checker."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.schemas = _closed(doc["components"]["schemas"])

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for path, item in self.doc["paths"].items():
            for method, op in item.items():
                if method in METHODS:
                    yield method.upper(), path, op

    def operation(self, method: str, path: str) -> dict[str, Any]:
        op: dict[str, Any] = self.doc["paths"][path][method.lower()]
        return op

    def validate(self, schema: dict[str, Any], body: Any) -> None:
        root = {**schema, "components": {"schemas": self.schemas}}
        jsonschema.Draft202012Validator(root).validate(body)

    async def check(
        self, method: str, path: str, resp: ClientResponse, status: int | None = None
    ) -> Any:
        """The reply's body, after checking its status is declared for the operation and
        its body matches that status's schema; ``status`` is the one the caller expects."""
        text = await resp.text()
        if status is not None:
            assert resp.status == status, (method, path, resp.status, text)
        declared = self.operation(method, path)["responses"]
        assert str(resp.status) in declared, (method, path, resp.status, text, list(declared))
        content = declared[str(resp.status)].get("content", {})
        media = {m.split(";")[0].strip(): m for m in content}
        assert resp.content_type in media, (method, path, resp.content_type, list(content))
        if resp.content_type != "application/json":
            return text
        body = json.loads(text)
        schema = content[media["application/json"]].get("schema")
        assert schema is not None, (method, path, resp.status)
        self.validate(schema, body)
        return body


def _routes(app: web.Application) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue  # HEAD: aiohttp's automatic twin of each GET
        # aiohttp writes a typed parameter {name:regex}; OpenAPI writes {name}.
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        found.add((route.method, path))
    return found


def _concrete(path: str, op: dict[str, Any]) -> str:
    """The path with a sample value for each parameter (1 where it is an integer)."""
    for param in op.get("parameters", []):
        if param["in"] == "path":
            sample = "1" if param["schema"].get("type") == "integer" else "x"
            path = path.replace("{" + param["name"] + "}", sample)
    assert "{" not in path, path
    return path


def _roles(op: dict[str, Any]) -> set[str] | None:
    """None: public; an empty set: any valid token; else the roles that may call it."""
    if op["security"] == []:
        return None
    return {role for req in op["security"] for roles in req.values() for role in roles}


async def _with_token(
    client: Client, method: str, url: str, op: dict[str, Any], token: str
) -> ClientResponse:
    """``method url`` with ``token`` where the operation takes it (header or query)."""
    schemes = {name for req in op["security"] for name in req}
    if "bearer" in schemes:
        return await client.request(method, url, headers=bearer(token))
    assert schemes == {"query_token"}, (url, schemes)
    return await client.request(method, url, params={"token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the document -------------------------------------------------------------------------


async def test_the_document_is_openapi_3_1(spec: Spec) -> None:
    validate_openapi(spec.doc)
    assert spec.doc["openapi"] == "3.1.0"
    assert spec.doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    error = spec.doc["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"}
    ids = [op["operationId"] for _, _, op in spec.operations()]
    assert len(ids) == len(set(ids))
    for method, path, op in spec.operations():
        roles = _roles(op)
        declared = set(op["responses"])
        if roles is not None:
            assert "401" in declared, (method, path)
            assert bool(roles) <= ("403" in declared), (method, path)


async def test_every_route_is_an_operation_and_every_operation_a_route(
    client: Client, spec: Spec
) -> None:
    routes = _routes(client.app)
    assert set(EXCLUDED) <= routes, f"stale exclusions: {set(EXCLUDED) - routes}"
    documented = {(method, path) for method, path, _ in spec.operations()}
    undocumented = routes - set(EXCLUDED) - documented
    assert not undocumented, f"routes without an operation in {SPEC_PATH}: {undocumented}"
    assert not documented - routes, f"operations without a route: {documented - routes}"


async def test_declared_auth_is_what_each_route_does(
    client: Client, spec: Spec, token_for: MakeToken
) -> None:
    for method, path, op in spec.operations():
        url = _concrete(path, op)
        roles = _roles(op)
        resp = await client.request(method, url)
        if roles is None:
            assert resp.status != 401, (method, path)
            await spec.check(method, path, resp)
            continue
        body = await spec.check(method, path, resp, 401)
        assert body["error"] == "token_missing", (method, path, body)
        resp = await _with_token(client, method, url, op, "not.a.jwt")
        assert (await spec.check(method, path, resp, 401))["error"] == "token_invalid"
        for role in ROLES:
            if roles and role not in roles:
                resp = await _with_token(client, method, url, op, token_for("u1", role))
                assert (await spec.check(method, path, resp, 403))["error"] == "forbidden"
        allowed = sorted(roles or ROLES)[0]
        # A plain request (no body, no query) by an allowed role: a declared reply.
        resp = await _with_token(client, method, url, op, token_for("u1", allowed))
        assert resp.status != 401, (method, path, allowed)
        await spec.check(method, path, resp)


# --- live replies against the schemas -----------------------------------------------------


async def test_scenario_replies_match_their_schemas(
    client: Client, spec: Spec, token_for: MakeToken
) -> None:
    admin = bearer(token_for("root", "admin"))
    alice, bob = bearer(token_for("alice")), bearer(token_for("bob", "host"))

    async def call(method: str, path: str, url: str, status: int, **kw: Any) -> Any:
        resp = await client.request(method, url, **kw)
        return await spec.check(method, path, resp, status)

    body = {"user_id": "alice", "amount": 100, "idempotency_key": "k1"}
    credited = await call("POST", "/v1/admin/credit", "/v1/admin/credit", 200, json=body,
                          headers=admin)  # fmt: skip
    assert credited == {"wallet": 100, "earnings": 0, "withdrawal_pending": 0}
    assert (await call("GET", "/v1/wallet", "/v1/wallet", 200, headers=alice))["wallet"] == 100
    entries = await call("GET", "/v1/wallet/entries", "/v1/wallet/entries?limit=1", 200,
                         headers=alice)  # fmt: skip
    assert [e["kind"] for e in entries["entries"]] == ["credit"]
    assert entries["next_before"] == entries["entries"][0]["id"]

    gift = {"name": "Rose", "price": 10}
    put = await call("PUT", "/v1/admin/gifts/{gift_id}", "/v1/admin/gifts/rose", 200,
                     json=gift, headers=admin)  # fmt: skip
    assert put == {"gift_id": "rose", "name": "Rose", "price": 10, "active": True}
    listed = await call("GET", "/v1/gifts", "/v1/gifts", 200, headers=alice)
    assert listed == {"gifts": [put]}
    rate = await call("PUT", "/v1/admin/hosts/{host}/rate", "/v1/admin/hosts/bob/rate", 200,
                      json={"rate": 5}, headers=admin)  # fmt: skip
    assert rate == {"host": "bob", "rate": 5}

    a = await connect(client, token_for("alice"))
    b = await connect(client, token_for("bob", "host"))
    await b.send_json({"type": "presence.update", "id": "p", "status": "available"})
    await recv(b, "ack")  # bob's presence is written: he is a host one can call
    listed = await call("GET", "/v1/hosts", "/v1/hosts", 200, headers=alice)
    assert listed == {"hosts": [{"id": "bob", "name": "Bob", "rate": 5}]}
    await call("GET", "/v1/hosts", "/v1/hosts?limit=0", 400, headers=alice)
    await a.send_json({"type": "gift.send", "id": "g", "to": "bob", "gift_id": "rose",
                       "idempotency_key": "g1"})  # fmt: skip
    await recv(a, "ack")
    await a.send_json({"type": "chat.send", "id": "m", "to": "bob", "client_msg_id": "m1",
                       "text": "hello"})  # fmt: skip
    await recv(a, "ack")
    await a.send_json({"type": "call.invite", "id": "c", "to": "bob"})
    call_id = (await recv(a, "ack"))["call_id"]
    await b.send_json({"type": "call.accept", "call_id": call_id})
    await recv(a, "call.started")
    await a.send_json({"type": "call.end", "call_id": call_id})
    await recv(b, "call.ended")
    await a.close()
    await b.close()

    convs = await call("GET", "/v1/conversations", "/v1/conversations", 200, headers=alice)
    (conv,) = convs["conversations"]
    assert conv["last_message"]["text"] == "hello"
    messages_path = "/v1/conversations/{conversation_id}/messages"
    page = await call("GET", messages_path, f"/v1/conversations/{conv['id']}/messages", 200,
                      headers=bob)  # fmt: skip
    assert [m["from"] for m in page["messages"]] == ["alice"]
    await call("GET", messages_path, f"/v1/conversations/{conv['id']}/messages", 403,
               headers=bearer(token_for("mallory")))  # fmt: skip
    calls = await call("GET", "/v1/calls", "/v1/calls", 200, headers=alice)
    assert [(c["call_id"], c["minutes"], c["coins"]) for c in calls["calls"]] == [(call_id, 1, 5)]

    # Withdrawals: a bad body, a short one, a good one, its replay, the review.
    w = "/v1/withdrawals"
    bad = await call("POST", w, w, 400, json={"amount": 1.5, "idempotency_key": "w1"},
                     headers=bob)  # fmt: skip
    assert bad["error"] == "invalid_request"
    await call("POST", w, w, 400, data=b"{not json", headers=bob)
    await call("POST", w, w, 402, json={"amount": 10**6, "idempotency_key": "w0"}, headers=bob)
    earnings = (await call("GET", "/v1/wallet", "/v1/wallet", 200, headers=bob))["earnings"]
    assert earnings > 0
    wanted = {"amount": earnings, "idempotency_key": "w1"}
    made = await call("POST", w, w, 201, json=wanted, headers=bob)
    assert (made["amount"], made["state"], made["decided_at"]) == (earnings, "pending", None)
    assert await call("POST", w, w, 200, json=wanted, headers=bob) == made
    assert await call("GET", w, w, 200, headers=bob) == {"withdrawals": [made]}
    review = "/v1/admin/withdrawals"
    queue = await call("GET", review, f"{review}?state=pending&host=bob", 200, headers=admin)
    assert queue == {"withdrawals": [made]}
    await call("GET", review, f"{review}?state=lost", 400, headers=admin)
    approve = "/v1/admin/withdrawals/{wid}/approve"
    paid = await call("POST", approve, f"{review}/{made['id']}/approve", 200, headers=admin)
    assert paid["state"] == "paid"
    await call("POST", approve, f"{review}/{made['id']}/approve", 409, headers=admin)
    await call("POST", "/v1/admin/withdrawals/{wid}/reject", f"{review}/999/reject", 404,
               headers=admin)  # fmt: skip

    receipt = json.dumps({"provider": "upi", "txn_id": "t1", "user_id": "alice",
                          "amount": 50}).encode()  # fmt: skip
    signed = {**alice, SIGNATURE_HEADER: sign(RECHARGE_SECRET.encode(), receipt)}
    r = "/v1/wallet/recharge"
    recharged = await call("POST", r, r, 200, data=receipt, headers=signed)
    assert recharged["wallet"] == 100 - 10 - 5 + 50
    await call("POST", r, r, 400, data=receipt, headers={**alice, SIGNATURE_HEADER: "00"})
    await call("POST", r, r, 403, data=receipt, headers={**bob, SIGNATURE_HEADER: signed[
        SIGNATURE_HEADER]})  # fmt: skip

    await call("GET", "/v1/admin/recordings", "/v1/admin/recordings", 200, headers=admin)


async def test_a_route_module_adds_its_operations(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    """How another route module (admin.py) documents its routes: its own constant tuple,
    added to the app where it adds the routes; the served document then includes it."""

    async def extra(request: web.Request) -> web.Response:
        return web.json_response({"host": "bob", "rate": 1})

    operations = (
        Operation("GET", "/v1/extra", "An extra route", roles=(Role.ADMIN,),
                  replies=(Reply(200, "A rate", HostRate),)),
    )  # fmt: skip
    app = create_app(make_settings())
    app.router.add_get("/v1/extra", extra)
    add_operations(app, operations)
    client: Client = await aiohttp_client(app)
    spec = Spec(await (await client.get(SPEC_PATH)).json())
    validate_openapi(spec.doc)
    op = spec.operation("GET", "/v1/extra")
    assert op["security"] == [{"bearer": ["admin"]}]
    assert set(op["responses"]) == {"200", "401", "403", "503"}
    assert ("GET", "/v1/wallet") in {(m, p) for m, p, _ in spec.operations()}
    resp = await client.get("/v1/extra")
    await spec.check("GET", "/v1/extra", resp, 200)
