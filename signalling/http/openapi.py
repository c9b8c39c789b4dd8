"""OpenAPI 3.1 for the REST surface, served at ``GET /v1/openapi.json``.

Each route module declares its operations once, as a module-level constant tuple of
``Operation``; the document is built from those tuples and from the same types the handlers
decode and encode (``shapes``, the ledger's value types), whose JSON Schemas come from
``msgspec.json.schema_components``. tests/contract/test_openapi.py checks the document
against the app's router both ways (a route without an operation fails, and so does an
operation without a route) and checks live replies against the schemas.

The operations live on the application (``add_operations``), next to its routes, never in
module state. ``install(app)`` serves the document and adds this module's ``OPERATIONS``
(rest.py's routes and the document itself). Another route module declares its own tuple and
adds it where it adds its routes, for example signalling/http/admin.py::

    from .openapi import ADMIN, QUERY_TOKEN, Operation, Reply, add_operations, error
    from .shapes import Health

    OPERATIONS = (
        Operation("GET", "/v1/admin/stats", "Platform figures", ADMIN,
                  (Reply(200, "The figures", Stats),)),          # Stats: a msgspec Struct
        Operation("DELETE", "/v1/admin/users/{user_id}/ban", "Lift a ban", ADMIN,
                  (Reply(200, "Unbanned", Unbanned), error(404, "Not banned: `not_found`"))),
        Operation("GET", "/admin", "The admin page", ADMIN,
                  (Reply(200, "The page", str, "text/html"),), schemes=(QUERY_TOKEN,)),
        Operation("GET", "/metrics", "Prometheus metrics", None,
                  (Reply(200, "Text exposition", str, "text/plain; version=0.0.4"),)),
        Operation("GET", "/healthz", "Liveness", None, (Reply(200, "Alive", Health),)),
        Operation("GET", "/readyz", "Readiness", None,
                  (Reply(200, "Ready", Ready), Reply(503, "Not ready", Ready))),
    )

    def add_admin_routes(app: web.Application) -> None:
        app.router.add_get("/v1/admin/stats", admin_stats)
        ...
        add_operations(app, OPERATIONS)

``roles``: None is a public route (no token), ``()`` (``ANY``) any valid token, and a tuple
of roles (``HOST``, ``ADMIN``) those roles only. ``schemes`` says where the token goes:
``BEARER`` (``Authorization: Bearer``, the default) or ``QUERY_TOKEN`` (``?token=``). An
authed operation gets 401, 403 (when roles are named) and 503 (store unavailable) replies
added; one with a body 400 and 413; one with query parameters 400; a declared reply of the
same status wins. Path parameters come from the path (strings unless a ``Param`` with
``where="path"`` says otherwise). ``Reply(status, description, shape, media_type)``:
``shape`` is any type msgspec can describe (a Struct, a dataclass, ``str``, ``list[X]``),
or None for a body with no schema (a file download). Two operations for one method and
path are an error (the document is not served).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from billing.ledger import Balances, Gift
from billing.receipts import Receipt

from ..auth import Role
from .shapes import (
    CallPage,
    ConversationPage,
    CreditRequest,
    EndedCall,
    EntryPage,
    ErrorBody,
    GiftList,
    GiftRequest,
    HostList,
    HostRate,
    MessagePage,
    RateRequest,
    RecordingList,
    WithdrawalInfo,
    WithdrawalList,
    WithdrawalRequest,
)

SPEC_PATH: Final = "/v1/openapi.json"
JSON: Final = "application/json"
BEARER: Final = "bearer"  # security schemes, by their names in components.securitySchemes
QUERY_TOKEN: Final = "query_token"
SECURITY_SCHEMES: Final[Mapping[str, Mapping[str, str]]] = {
    BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    QUERY_TOKEN: {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The same JWT in the query, for a page a browser opens",
    },
}
REF_TEMPLATE: Final = "#/components/schemas/{name}"


@dataclass(frozen=True, slots=True)
class Param:
    """A query, path or header parameter; ``type`` is described by msgspec."""

    name: str
    description: str
    type: Any = str
    where: Literal["query", "path", "header"] = "query"
    required: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """One response: a status, what it means, and the body's type (None: no schema)."""

    status: int
    description: str
    shape: Any = None
    media_type: str = JSON


def error(status: int, description: str) -> Reply:
    """An error reply: the JSON ``{error, message}`` body."""
    return Reply(status, description, ErrorBody)


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: ``path`` as aiohttp writes it (``{name}`` parameters, no regex)."""

    method: str
    path: str
    summary: str
    roles: tuple[Role, ...] | None  # None: public; (): any valid token; else these roles
    replies: tuple[Reply, ...]
    body: Any = None  # the request body's type (JSON), or None
    params: tuple[Param, ...] = ()
    description: str = ""
    tag: str = ""
    schemes: tuple[str, ...] = (BEARER,)  # where an authed operation takes its token


OPERATIONS_KEY: Final = web.AppKey("openapi_operations", tuple[Operation, ...])


def add_operations(app: web.Application, operations: Iterable[Operation]) -> None:
    """Declare routes' operations on ``app``, while it is being built (before it starts)."""
    app[OPERATIONS_KEY] = (*(app.get(OPERATIONS_KEY) or ()), *operations)


def install(app: web.Application) -> None:
    """Serve the document at ``SPEC_PATH`` and declare this module's ``OPERATIONS``."""
    app.router.add_get(SPEC_PATH, openapi_json)
    add_operations(app, OPERATIONS)


async def openapi_json(request: web.Request) -> web.Response:
    """The document for every operation declared on this app (public)."""
    operations: tuple[Operation, ...] = request.app.get(OPERATIONS_KEY) or ()
    spec = document(operations)
    return web.Response(body=msgspec.json.encode(spec), content_type=JSON)


# --- the document -------------------------------------------------------------------------

_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AUTO_ERRORS: Final = {
    400: "The request is not what the route takes: `invalid_request`",
    401: "No valid bearer token (`token_missing`, `token_invalid`, `token_expired`)",
    403: "The token's role may not do this: `forbidden`",
    413: "The body is over 64 KiB: `too_large`",
    503: "A store (the database, MongoDB) is unavailable: `unavailable`; retry shortly",
}


def _version() -> str:
    try:
        return metadata.version("jalwa")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _replies(op: Operation) -> list[Reply]:
    declared = {r.status: r for r in op.replies}
    auto: list[int] = []
    if op.body is not None:
        auto += [400, 413]
    if any(p.where == "query" for p in op.params):
        auto.append(400)
    if op.roles is not None:
        auto += [401, 403, 503] if op.roles else [401, 503]
    for status in auto:
        declared.setdefault(status, error(status, _AUTO_ERRORS[status]))
    return [declared[s] for s in sorted(declared)]


def _types(operations: Iterable[Operation]) -> list[Any]:
    found: list[Any] = [ErrorBody]
    for op in operations:
        candidates = [op.body, *(r.shape for r in _replies(op)), *(p.type for p in op.params)]
        found += [t for t in candidates if t is not None and t not in found]
    return found


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_")
    return f"{op.method.lower()}_{words or 'root'}"


def _security(op: Operation) -> list[dict[str, list[str]]]:
    if op.roles is None:
        return []
    unknown = set(op.schemes) - set(SECURITY_SCHEMES)
    if unknown or not op.schemes:
        raise ValueError(f"{op.method} {op.path}: security schemes {op.schemes!r}")
    if not op.roles:
        return [{scheme: []} for scheme in op.schemes]
    # OpenAPI 3.1: for a non-OAuth scheme the list names the roles the operation needs.
    return [{scheme: [role.value]} for scheme in op.schemes for role in op.roles]


def _parameters(op: Operation, schema_of: Any) -> list[dict[str, Any]]:
    given = {(p.where, p.name): p for p in op.params}
    out: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(op.path):
        p = given.pop(("path", name), Param(name, f"The {name.replace('_', ' ')}", where="path"))
        out.append({"name": name, "in": "path", "required": True,
                    "description": p.description, "schema": schema_of(p.type)})  # fmt: skip
    for (where, name), p in given.items():
        if where == "path":
            raise ValueError(f"{op.method} {op.path}: no path parameter {name!r}")
        out.append({"name": name, "in": where, "required": p.required,
                    "description": p.description, "schema": schema_of(p.type)})  # fmt: skip
    return out


def _describe(op: Operation) -> str:
    if op.roles is None:
        who = "Public: no token needed."
    elif not op.roles:
        who = "Any valid token."
    else:
        who = "A token with role " + " or ".join(r.value for r in op.roles) + "."
    return f"{op.description}\n\n{who}".strip()


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations`` (duplicates are an error)."""
    ops = list(operations)
    seen: set[tuple[str, str]] = set()
    for op in ops:
        if (op.method, op.path) in seen:
            raise ValueError(f"two operations for {op.method} {op.path}")
        seen.add((op.method, op.path))
    types = _types(ops)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    by_type = list(zip(types, schemas, strict=True))

    def schema_of(t: Any) -> dict[str, Any]:
        return next(s for known, s in by_type if known == t)

    paths: dict[str, dict[str, Any]] = {}
    for op in sorted(ops, key=lambda o: (o.path, o.method)):
        entry: dict[str, Any] = {
            "operationId": _operation_id(op),
            "summary": op.summary,
            "description": _describe(op),
            "security": _security(op),
            "responses": {
                str(r.status): {
                    "description": r.description,
                    **(
                        {"content": {r.media_type: {"schema": schema_of(r.shape)}}}
                        if r.shape is not None
                        else {"content": {r.media_type: {}}}
                    ),
                }
                for r in _replies(op)
            },
        }
        if op.tag:
            entry["tags"] = [op.tag]
        if params := _parameters(op, schema_of):
            entry["parameters"] = params
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": schema_of(op.body)}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jalwa REST API",
            "version": _version(),
            "description": "Wallets, history, gifts, withdrawals, chat history and the admin "
            "endpoints. Every error is JSON `{error, message}`. The WebSocket protocol "
            "(`/v1/ws`) is described in docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {name: dict(s) for name, s in SECURITY_SCHEMES.items()},
        },
    }


# --- rest.py's routes and this document -----------------------------------------

Limit = Annotated[int, msgspec.Meta(ge=1, le=200)]
EntryId = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
UnixTime = Annotated[float, msgspec.Meta(ge=0)]
WithdrawalId = Annotated[int, msgspec.Meta(ge=0)]
ANY: Final[tuple[Role, ...]] = ()
HOST: Final = (Role.HOST,)
ADMIN: Final = (Role.ADMIN,)

LIMIT = Param("limit", "Page size, 1 to 200 (default 50)", Limit)
CURSOR = Param("before", "The `next_before` of the previous page (an opaque cursor)")
NOT_FOUND_WITHDRAWAL = error(404, "No such withdrawal: `not_found`")
DECIDED = error(409, "Already decided: `invalid_state`")
CONFLICT = error(409, "The key was used for a different request: `idempotency_conflict`")
WID = Param("wid", "The withdrawal's id", WithdrawalId, where="path")


def _decide(verb: str, outcome: str) -> Operation:
    return Operation(
        "POST", f"/v1/admin/withdrawals/{{wid}}/{verb}", f"{verb.title()} a withdrawal", ADMIN,
        (Reply(200, f"The withdrawal, now {outcome}", WithdrawalInfo),
         NOT_FOUND_WITHDRAWAL, DECIDED),
        params=(WID,), description="Exactly once.", tag="admin",
    )  # fmt: skip


# fmt: off
OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation("GET", SPEC_PATH, "This document", None,
              (Reply(200, "The OpenAPI 3.1 document", dict[str, Any]),), tag="service"),
    Operation("GET", "/v1/wallet", "The caller's balances", ANY,
              (Reply(200, "Wallet (bought coins), earnings and pending withdrawals", Balances),),
              tag="wallet"),
    Operation("GET", "/v1/wallet/entries", "The caller's journal entries", ANY,
              (Reply(200, "Entries, newest first", EntryPage),),
              params=(Param("before", "The `next_before` of the previous page (an entry id)",
                            EntryId), LIMIT), tag="wallet"),
    Operation("POST", "/v1/wallet/recharge", "Credit a signed recharge receipt", ANY,
              (Reply(200, "Balances after the recharge (the same on a replay)", Balances),
               error(400, "`bad_receipt` (signature or shape) or `invalid_amount`"),
               error(403, "The receipt is for another user: `forbidden`"),
               error(409, "The transaction was replayed with another amount"),
               error(413, "The receipt is over 16 KiB: `too_large`"),
               error(503, "`recharge_disabled` (no secret configured) or `unavailable`")),
              body=Receipt,
              params=(Param("X-Jalwa-Signature", "hex(HMAC-SHA256(secret, raw body))",
                            where="header", required=True),),
              description="The body is the payment provider's receipt, signed as sent.",
              tag="wallet"),
    Operation("GET", "/v1/calls", "Calls the caller paid for or hosted", ANY,
              (Reply(200, "Calls, newest first, with minutes, coins and end reason", CallPage),),
              params=(Param("before", "The `next_before` of the previous page (unix seconds)",
                            UnixTime), LIMIT), tag="calls"),
    Operation("GET", "/v1/gifts", "The gift catalog on sale", ANY,
              (Reply(200, "Active gifts", GiftList),), tag="gifts"),
    Operation("GET", "/v1/hosts", "Hosts one can call now", ANY,
              (Reply(200, "Hosts online with status available, by name then id, with their "
                     "rate in coins per minute", HostList),),
              params=(LIMIT,), tag="hosts",
              description="A host in a call is busy and not listed; the caller is never "
              "listed. The same answer from every node."),
    Operation("GET", "/v1/conversations", "The caller's conversations", ANY,
              (Reply(200, "Newest activity first, with the caller's unread count",
                     ConversationPage),),
              params=(CURSOR, LIMIT), tag="chat"),
    Operation("GET", "/v1/conversations/{conversation_id}/messages", "A conversation's messages",
              ANY,
              (Reply(200, "Messages, newest first", MessagePage),
               error(403, "Not a participant: `chat_forbidden`"),
               error(404, "No such conversation: `chat_not_found`")),
              params=(CURSOR, LIMIT), tag="chat"),
    Operation("POST", "/v1/withdrawals", "Withdraw earnings", HOST,
              (Reply(200, "A replayed key: the withdrawal as it is now", WithdrawalInfo),
               Reply(201, "Earnings moved to pending", WithdrawalInfo),
               error(402, "Not enough earnings: `insufficient_funds`"), CONFLICT),
              body=WithdrawalRequest, tag="withdrawals"),
    Operation("GET", "/v1/withdrawals", "The host's withdrawals", HOST,
              (Reply(200, "Newest first", WithdrawalList),), tag="withdrawals"),
    Operation("POST", "/v1/admin/credit", "Top up a wallet", ADMIN,
              (Reply(200, "The user's balances after the credit", Balances), CONFLICT),
              body=CreditRequest, tag="admin"),
    Operation("PUT", "/v1/admin/hosts/{host}/rate", "Set a host's rate", ADMIN,
              (Reply(200, "The rate as set", HostRate),), body=RateRequest, tag="admin"),
    Operation("PUT", "/v1/admin/gifts/{gift_id}", "Create or replace a gift", ADMIN,
              (Reply(200, "The gift as stored", Gift),), body=GiftRequest, tag="admin"),
    Operation("GET", "/v1/admin/withdrawals", "Withdrawals to review", ADMIN,
              (Reply(200, "Newest first", WithdrawalList),),
              params=(Param("state", "Only these", Literal["pending", "paid", "rejected"]),
                      Param("host", "Only this host's")), tag="admin"),
    _decide("approve", "paid"),
    _decide("reject", "rejected"),
    Operation("POST", "/v1/admin/calls/{call_id}/end", "End a running call", ADMIN,
              (Reply(200, "Ended with reason `admin`", EndedCall),
               error(404, "No such call running: `not_found`")), tag="admin"),
    Operation("GET", "/v1/admin/recordings", "Recording files", ADMIN,
              (Reply(200, "Files under `media.record_dir`", RecordingList),), tag="recordings"),
    Operation("GET", "/v1/admin/recordings/{call_id}/{party}", "Download a recording", ADMIN,
              (Reply(200, "WebM (VP8 + Opus, as sent, never re-encoded)", None, "video/webm"),
               error(404, "No finished recording of that call and party: `not_found`")),
              tag="recordings"),
)
# fmt: on
