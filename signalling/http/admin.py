"""The operations surface: admin stats, active calls, users and bans, the admin page,
Prometheus metrics, health and readiness (docs/api.md, docs/operations.md)."""

from __future__ import annotations

from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ..admin.metrics import CONTENT_TYPE
from ..admin.ops import readiness
from ..auth import Identity, Role
from ..errors import AuthError
from ..keys import CALLS, CLOCK, HUB, LEDGER, OPERATIONS, PRESENCE, VERIFIER
from ..protocol import EndReason
from .rest import _error, _json, _page_limit, authed

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
RECENT_CALLS = 10


class BanRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


@authed(Role.ADMIN)
async def admin_stats(request: web.Request, who: Identity) -> web.StreamResponse:
    return _json(await request.app[OPERATIONS].stats.stats())


@authed(Role.ADMIN)
async def admin_active_calls(request: web.Request, who: Identity) -> web.StreamResponse:
    calls = await request.app[OPERATIONS].reports.active_calls(_page_limit(request))
    entries = await request.app[CALLS].directory.of_users([c.payer for c in calls])
    now = request.app[CLOCK].time()
    return _json(
        {
            "calls": [
                {
                    "call_id": c.call_id,
                    "payer": c.payer,
                    "host": c.host,
                    "rate": c.rate,
                    "minutes": c.minutes,
                    "coins": c.coins,
                    "started_at": c.started_at,
                    "duration_s": max(0.0, round(now - c.started_at, 1)),
                    "node": (e.owner if (e := entries.get(c.payer)) is not None else None),
                }
                for c in calls
            ]
        }
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
        {
            "user_id": uid,
            "role": None if record is None else record.role,
            "online": record is not None,
            "status": None if record is None else record.status,
            "node": None if record is None else record.node_id,
            "rate": await ledger.host_rate(uid),
            "balances": asdict(await ledger.balances(uid)),
            "in_call": None if entry is None else entry.call_id,
            "banned": None if ban is None else asdict(ban),
            "calls": [asdict(c) for c in calls],
        }
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
    return _json({"banned": asdict(ban)})


@authed(Role.ADMIN)
async def admin_unban(request: web.Request, who: Identity) -> web.StreamResponse:
    uid = _user_id(request)
    if not await request.app[OPERATIONS].bans.unban(uid):
        return _error(404, "not_found", f"{uid} is not banned")
    return _json({"unbanned": uid})


async def admin_page(request: web.Request) -> web.StreamResponse:
    """The page, for an admin token in ``?token=`` (a browser cannot send a header when it
    opens a page); its script calls the API with the same token."""
    try:
        who = request.app[VERIFIER].verify(request.query.get("token", ""))
    except AuthError as exc:
        return _error(401, exc.code, exc.message)
    if who.role != Role.ADMIN:
        return _error(403, "forbidden", "the admin page is for admins")
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
    return web.json_response({"status": "ok", "node": hub.node_id, "sessions": len(hub.sessions)})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready for new sessions: every store answers, and the node is not draining."""
    hub = request.app[HUB]
    stores = await readiness(request.app[OPERATIONS].probes)
    draining = hub.draining
    ready = not draining and all(v == "ok" for v in stores.values())
    body: dict[str, Any] = {
        "status": "ready" if ready else ("draining" if draining else "unavailable"),
        "node": hub.node_id,
        "stores": stores,
    }
    return web.json_response(body, status=200 if ready else 503)


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
