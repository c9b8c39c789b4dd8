"""The operations surface: admin stats, active calls, users and bans, the admin page,
Prometheus metrics, health and readiness (docs/api.md, docs/operations.md)."""

from __future__ import annotations

from importlib import resources
from typing import Annotated

import msgspec
from aiohttp import web

from billing.ledger import Balances, CallRecord

from ..admin.bans import Ban
from ..admin.metrics import CONTENT_TYPE
from ..admin.ops import readiness
from ..admin.stats import Stats
from ..auth import Identity, Role
from ..keys import CALLS, CLOCK, HUB, LEDGER, OPERATIONS, PRESENCE
from ..protocol import EndReason, UserId
from .openapi import ADMIN, QUERY_TOKEN, Operation, Param, Reply, add_operations, error
from .rest import _error, _json, _page_limit, authed
from .shapes import Health

RECENT_CALLS = 10


class BanRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class ActiveCall(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    payer: str
    host: str
    rate: int
    minutes: int  # charged so far (minute 1 at the start, prepaid)
    coins: int
    started_at: float
    duration_s: float
    node: str | None  # the node that runs it (None: its directory entry lapsed)


class ActiveCalls(msgspec.Struct, frozen=True):
    calls: list[ActiveCall]


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    role: str | None  # from their live session (tokens carry roles; offline: unknown)
    online: bool
    status: str | None
    node: str | None
    rate: int | None  # a host's own rate, if one is set
    balances: Balances
    in_call: str | None
    banned: Ban | None
    calls: list[CallRecord]  # the latest, newest first


class Banned(msgspec.Struct, frozen=True):
    banned: Ban


class Unbanned(msgspec.Struct, frozen=True):
    unbanned: str


class Ready(msgspec.Struct, frozen=True):
    status: str  # ready, draining or unavailable
    node: str
    stores: dict[str, str]  # store -> "ok" or what went wrong


@authed(Role.ADMIN)
async def admin_stats(request: web.Request, who: Identity) -> web.StreamResponse:
    return _json(await request.app[OPERATIONS].stats.stats())


@authed(Role.ADMIN)
async def admin_active_calls(request: web.Request, who: Identity) -> web.StreamResponse:
    calls = await request.app[OPERATIONS].reports.active_calls(_page_limit(request))
    entries = await request.app[CALLS].directory.of_users([c.payer for c in calls])
    now = request.app[CLOCK].time()
    return _json(
        ActiveCalls(
            [
                ActiveCall(
                    call_id=c.call_id,
                    payer=c.payer,
                    host=c.host,
                    rate=c.rate,
                    minutes=c.minutes,
                    coins=c.coins,
                    started_at=c.started_at,
                    duration_s=max(0.0, round(now - c.started_at, 1)),
                    node=e.owner if (e := entries.get(c.payer)) is not None else None,
                )
                for c in calls
            ]
        )
    )


def _user_id(request: web.Request) -> str:
    return msgspec.convert(request.match_info["user_id"], UserId)


@authed(Role.ADMIN)
async def admin_user(request: web.Request, who: Identity) -> web.StreamResponse:
    uid = _user_id(request)
    app = request.app
    ledger = app[LEDGER]
    record = (await app[PRESENCE].store.get_many([uid])).get(uid)
    entry = (await app[CALLS].directory.of_users([uid])).get(uid)
    ban = await app[OPERATIONS].bans.get(uid)
    calls = await ledger.calls(uid, limit=RECENT_CALLS, before=None)
    return _json(
        UserView(
            user_id=uid,
            role=None if record is None else record.role,
            online=record is not None,
            status=None if record is None else record.status,
            node=None if record is None else record.node_id,
            rate=await ledger.host_rate(uid),
            balances=await ledger.balances(uid),
            in_call=None if entry is None else entry.call_id,
            banned=ban,
            calls=calls,
        )
    )


@authed(Role.ADMIN)
async def admin_ban(request: web.Request, who: Identity) -> web.StreamResponse:
    uid = _user_id(request)
    body = msgspec.json.decode(await request.read(), type=BanRequest)
    ban = await request.app[OPERATIONS].bans.ban(uid, by=who.user_id, reason=body.reason)
    # Stored first: a reconnect from now on is refused; then out of their call, and out.
    entry = (await request.app[CALLS].directory.of_users([uid])).get(uid)
    if entry is not None:
        await request.app[CALLS].end_call_anywhere(entry.call_id, EndReason.ADMIN)
    await request.app[HUB].evict(uid, "banned")
    return _json(Banned(ban))


@authed(Role.ADMIN)
async def admin_unban(request: web.Request, who: Identity) -> web.StreamResponse:
    uid = _user_id(request)
    if not await request.app[OPERATIONS].bans.unban(uid):
        return _error(404, "not_found", f"{uid} is not banned")
    return _json(Unbanned(uid))


@authed(Role.ADMIN)
async def admin_page(request: web.Request, who: Identity) -> web.StreamResponse:
    """The page, for an admin token in ``?token=`` (a browser cannot send a header when it
    opens a page; ``bearer_token`` reads the query first); its script calls the API with
    the same token."""
    page = resources.files("signalling").joinpath("static/admin.html").read_text("utf-8")
    return web.Response(
        text=page,
        content_type="text/html",
        # The token is in the URL: never send it on as a referrer, never cache the page.
        headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    body = request.app[OPERATIONS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive: the process answers (no store is asked)."""
    hub = request.app[HUB]
    return _json(Health(status="ok", node=hub.node_id, sessions=len(hub.sessions)))


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready for new sessions: every store answers, and the node is not draining."""
    hub = request.app[HUB]
    stores = await readiness(request.app[OPERATIONS].probes)
    draining = hub.draining
    ready = not draining and all(v == "ok" for v in stores.values())
    status = "ready" if ready else ("draining" if draining else "unavailable")
    return _json(Ready(status, hub.node_id, stores), status=200 if ready else 503)


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/admin/stats", admin_stats)
    r.add_get("/v1/admin/calls/active", admin_active_calls)
    r.add_get("/v1/admin/users/{user_id}", admin_user)
    r.add_put("/v1/admin/users/{user_id}/ban", admin_ban)
    r.add_delete("/v1/admin/users/{user_id}/ban", admin_unban)
    r.add_get("/admin", admin_page)
    r.add_get("/metrics", metrics)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    add_operations(app, ADMIN_OPERATIONS)


_USER = "/v1/admin/users/{user_id}"
_LIMIT = Param("limit", "at most this many (1-200, default 50)", int)
ADMIN_OPERATIONS = (
    Operation(
        "GET", "/v1/admin/stats", "Platform figures, from the stores", ADMIN,
        (Reply(200, "Online users, pools, money and calls today and in the last hour, "
               "and every node's own figures", Stats),),
        tag="admin",
    ),
    Operation(
        "GET", "/v1/admin/calls/active", "Calls being charged now", ADMIN,
        (Reply(200, "Oldest first", ActiveCalls),), params=(_LIMIT,), tag="admin",
    ),
    Operation(
        "GET", _USER, "One user: role, rate, balances, presence, call, ban, latest calls",
        ADMIN, (Reply(200, "The user", UserView), error(400, "Not a user id")), tag="admin",
    ),
    Operation(
        "PUT", _USER + "/ban", "Ban a user: out of their call and disconnected on every "
        "node at once, refused from then on", ADMIN,
        (Reply(200, "The ban (the first one, if they were banned already)", Banned),),
        body=BanRequest, tag="admin",
    ),
    Operation(
        "DELETE", _USER + "/ban", "Lift a ban", ADMIN,
        (Reply(200, "Lifted", Unbanned), error(404, "Not banned: `not_found`")), tag="admin",
    ),
    Operation(
        "GET", "/admin", "The admin page (live figures, calls, withdrawals)", ADMIN,
        (Reply(200, "The page", str, "text/html"),), schemes=(QUERY_TOKEN,), tag="admin",
    ),
    Operation(
        "GET", "/metrics", "Prometheus metrics", None,
        (Reply(200, "The text exposition format", str, CONTENT_TYPE.split(";")[0]),),
        tag="operations",
    ),
    Operation(
        "GET", "/healthz", "Alive (asks no store)", None, (Reply(200, "Alive", Health),),
        tag="operations",
    ),
    Operation(
        "GET", "/readyz", "Ready for new sessions: every store answers, not draining", None,
        (Reply(200, "Ready", Ready), Reply(503, "Draining, or a store is away", Ready)),
        tag="operations",
    ),
)  # fmt: skip
