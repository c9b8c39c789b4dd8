"""Development mode only: tokens for loopback clients, the demo app at ``/`` (plain files
under ``static/app``, built on ``/jalwa.js``), the protocol console at ``/console``, and a
starter gift catalog so the app's gift button has something to send (docs/demo-app.md)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from billing.ledger import Gift

from ..auth import Identity, Role, mint_token
from ..errors import ConfigError
from ..keys import CLOCK, KEYS, LEDGER, SETTINGS

__all__ = ["DEV_CREDIT_MAX", "STARTER_GIFTS", "add_dev_routes"]

DEV_CREDIT_MAX = 10_000
# What a fresh development ledger sells (only when its catalog is empty): coins are prices.
STARTER_GIFTS = (
    Gift("rose", "Rose", 5, True),
    Gift("heart", "Heart", 10, True),
    Gift("star", "Star", 25, True),
    Gift("crown", "Crown", 100, True),
)
STATIC = resources.files("signalling").joinpath("static")
_TYPES = {".js": "text/javascript", ".css": "text/css"}
APP_FILES = {
    f.name: _TYPES[Path(f.name).suffix]
    for f in STATIC.joinpath("app").iterdir()
    if Path(f.name).suffix in _TYPES
}
log = logging.getLogger("jalwa")


def add_dev_routes(app: web.Application, *, pages: bool, gifts: bool) -> None:
    app.router.add_get("/v1/dev/token", dev_token)
    if pages:
        app.router.add_get("/", _file("app/index.html", "text/html"))
        app.router.add_get("/console", _file("demo.html", "text/html"))
        app.router.add_get("/app/{name}", _app_file)
    if gifts:
        app.on_startup.append(_starter_gifts)


async def _app_file(request: web.Request) -> web.Response:
    """The app's own modules and style sheet: a fixed set of names, nothing else."""
    name = request.match_info["name"]
    content_type = APP_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text="no such file")
    return web.Response(
        text=STATIC.joinpath("app", name).read_text("utf-8"), content_type=content_type
    )


def _file(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        text = STATIC.joinpath(name).read_text("utf-8")
        return web.Response(text=text, content_type=content_type)

    return handler


async def _starter_gifts(app: web.Application) -> None:
    """Runs after the cleanup contexts opened the ledger (aiohttp runs them first)."""
    ledger = app[LEDGER]
    if await ledger.gifts(active_only=False):
        return
    for gift in STARTER_GIFTS:
        await ledger.put_gift(gift)
    log.info("development mode: a starter gift catalog (%d gifts)", len(STARTER_GIFTS))


def _is_loopback(request: web.Request) -> bool:
    peer = request.remote or ""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(peer).is_loopback
    return False


async def dev_token(request: web.Request) -> web.Response:
    """A token for the demo pages, and optionally coins to try calls with. Loopback only."""
    if not _is_loopback(request):
        raise web.HTTPForbidden(text="development tokens are for loopback clients only")
    user = request.query.get("user", "")
    role = request.query.get("role", "caller")
    if role not in {Role.CALLER.value, Role.HOST.value}:
        raise web.HTTPBadRequest(text="role must be caller or host")
    credit = request.query.get("credit", "0")
    if not (credit.isascii() and credit.isdigit()) or int(credit) > DEV_CREDIT_MAX:
        raise web.HTTPBadRequest(text=f"credit must be 0..{DEV_CREDIT_MAX} coins")
    try:
        token = mint_token(
            request.app[KEYS],
            request.app[SETTINGS].auth,
            Identity(user, Role(role), request.query.get("name", user)[:64]),
            ttl_s=3600,
            clock=request.app[CLOCK],
        )
    except ConfigError as exc:
        raise web.HTTPBadRequest(text=exc.message) from exc
    if int(credit) > 0:
        key = f"dev:{user}:{secrets.token_hex(8)}"
        await request.app[LEDGER].credit(key, user, int(credit), admin="dev")
    return web.json_response({"token": token})
