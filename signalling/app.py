"""The composition root: ``create_app(settings)`` builds every part of jalwa (DESIGN §1).

Every pool and background task is owned by a cleanup context, so tests and ``jalwa serve``
start and stop the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import redis.asyncio as aioredis
from aiohttp import web

from .auth import Identity, KeyMaterial, Role, TokenVerifier, load_keys, mint_token
from .clock import Clock, SystemClock
from .errors import ConfigError
from .hub import CallHooks, FreeCalls, Hub
from .presence import MemoryPresence, MemoryWorld, PresenceStore
from .presence_redis import RedisPresence
from .settings import Settings
from .ws import HUB, HUB_SETTINGS, VERIFIER, websocket

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeyMaterial)
CLOCK = web.AppKey("clock", Clock)
TIMER_TICK_S = 0.25
log = logging.getLogger("jalwa")


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    hooks: CallHooks | None = None,
) -> web.Application:
    if settings.env == "production" and (problems := settings.production_problems()):
        raise ConfigError("production mode cannot start: " + "; ".join(problems))
    keys = load_keys(settings, create_dev_key=True)
    if keys.dev:
        log.warning(
            "development mode: JWTs are signed with the local key in %s; never expose this",
            settings.auth.dev_key_file,
        )
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[KEYS] = keys
    app[CLOCK] = clock or SystemClock()
    app[HUB_SETTINGS] = settings.hub
    app[VERIFIER] = TokenVerifier(keys, settings.auth)
    app.cleanup_ctx.append(_hub_context(hooks or FreeCalls()))
    app.on_shutdown.append(_close_sessions)
    app.router.add_get("/v1/ws", websocket)
    app.router.add_get("/healthz", _health)
    if settings.env == "development":
        app.router.add_get("/v1/dev/token", _dev_token)
        if settings.hub.demo_page:
            app.router.add_get("/", _demo_page)
    return app


def _hub_context(
    hooks: CallHooks,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, clock = app[SETTINGS], app[CLOCK]
        client: aioredis.Redis | None = None
        presence: PresenceStore
        if settings.redis_url is not None:
            client = aioredis.from_url(settings.redis_url)
            await client.ping()
            presence = RedisPresence(
                client,
                settings.node_id,
                prefix=settings.presence.key_prefix,
                ttl_s=settings.presence.ttl_s,
                node_ttl_s=settings.presence.node_ttl_s,
            )
        else:
            presence = MemoryPresence(
                MemoryWorld(clock),
                settings.node_id,
                ttl_s=settings.presence.ttl_s,
                node_ttl_s=settings.presence.node_ttl_s,
            )
        hub = Hub(
            settings=settings.hub,
            presence=presence,
            clock=clock,
            hooks=hooks,
            media="p2p",
            logger=logging.getLogger("jalwa.hub"),
        )
        app[HUB] = hub
        await hub.beat()
        beat_every = min(settings.presence.node_ttl_s, settings.presence.ttl_s) / 3
        tasks = [
            asyncio.create_task(_every(TIMER_TICK_S, hub.tick, "timers")),
            asyncio.create_task(_every(beat_every, hub.beat, "presence beat")),
        ]
        log.info("hub up: node %s, presence in %s", settings.node_id, type(presence).__name__)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await presence.retire()
            await presence.close()
            if client is not None:
                await client.aclose()

    return ctx


async def _every(period: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            await job()
        except Exception:
            # A store hiccup must not kill the loop; the next round retries.
            log.exception("%s failed", name)


async def _close_sessions(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        await hub.shutdown()
        # Let the pumps flush call.ended and the 1012 close before the loop stops.
        for _ in range(20):
            if not hub.sessions:
                break
            await asyncio.sleep(0.05)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "sessions": len(request.app[HUB].sessions)})


def _is_loopback(request: web.Request) -> bool:
    peer = request.remote or ""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(peer).is_loopback
    return False


async def _dev_token(request: web.Request) -> web.Response:
    """Development only: a token for the demo page. Loopback callers only."""
    if not _is_loopback(request):
        raise web.HTTPForbidden(text="development tokens are for loopback clients only")
    user = request.query.get("user", "")
    role = request.query.get("role", "caller")
    if role not in {Role.CALLER.value, Role.HOST.value}:
        raise web.HTTPBadRequest(text="role must be caller or host")
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
    return web.json_response({"token": token})


async def _demo_page(request: web.Request) -> web.Response:
    page = resources.files("signalling").joinpath("static/demo.html").read_text("utf-8")
    return web.Response(text=page, content_type="text/html")
