"""The composition root: ``create_app(settings)`` builds every part of jalwa (DESIGN §1);
``assembly.assemble`` wires the hub and its wings (re-exported here).

Every pool and background task is owned by a cleanup context, so tests and ``jalwa serve``
start and stop the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer
from pymongo import AsyncMongoClient

from billing.ledger_memory import MemoryLedger
from billing.ledger_pg import PgLedger
from billing.loop import BillingLoop
from billing.migrate import migrate
from media.sfu import Sfu
from turn.credentials import ice_servers as turn_ice_servers

from .admin.metrics import Metrics
from .assembly import MatchParts, Wings, assemble
from .auth import TokenVerifier, load_keys
from .calls.billing import HubBillingEvents, LedgerHooks
from .calls.directory import CallDirectory, MemoryCallDirectory
from .calls.directory_redis import RedisCallDirectory
from .calls.gifts import Gifts
from .calls.hooks import CallHooks
from .chat.handlers import ChatService
from .chat.memory import MemoryChat
from .chat.mongo import MongoChat
from .clock import Clock, SystemClock
from .cluster.bus import LocalRouter, RedisRouter, Router
from .cluster.resume import MemoryResume, ResumeStore
from .cluster.resume_redis import RedisResume
from .errors import ConfigError
from .http.admin import add_admin_routes
from .http.dev import add_dev_routes
from .http.rest import add_routes, json_errors
from .keys import (
    BILLING_SETTINGS,
    CALLS,
    CHAT,
    CHAT_STORE,
    CLOCK,
    CONNECTIONS,
    HUB,
    HUB_SETTINGS,
    KEYS,
    LEDGER,
    METRICS,
    MONGO,
    OPERATIONS,
    PG_POOL,
    PRESENCE,
    SETTINGS,
    SFU,
    VERIFIER,
)
from .limits import ConnectionLimiter
from .match.memory import MemoryMatch
from .match.redis_store import RedisMatch
from .match.store import Limits, MatchStore
from .operations import build_operations
from .presence.memory import MemoryPresence, MemoryWorld
from .presence.redis_store import RedisPresence
from .presence.store import PresenceStore
from .protocol import IceServerInfo
from .settings import Settings
from .ws import websocket

__all__ = ["MatchParts", "Wings", "assemble", "create_app"]

log = logging.getLogger("jalwa")


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    hooks: CallHooks | None = None,
) -> web.Application:
    """Everything jalwa serves. ``hooks`` replaces the ledger-backed call hooks (tests)."""
    if settings.env == "production" and (problems := settings.production_problems()):
        raise ConfigError("production mode cannot start: " + "; ".join(problems))
    keys = load_keys(settings, create_dev_key=True)
    if keys.dev:
        log.warning(
            "development mode: JWTs are signed with the local key in %s; never expose this",
            settings.auth.dev_key_file,
        )
    app = web.Application(client_max_size=64 * 1024, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[KEYS] = keys
    app[CLOCK] = clock or SystemClock()
    app[HUB_SETTINGS] = settings.hub
    app[VERIFIER] = TokenVerifier(keys, settings.auth)
    app[CONNECTIONS] = ConnectionLimiter(settings.hub, app[CLOCK])
    app[BILLING_SETTINGS] = settings.billing
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_ledger_context)
    app.cleanup_ctx.append(_chat_context)
    app.cleanup_ctx.append(_hub_context(hooks))
    app.on_shutdown.append(_close_sessions)
    app.router.add_get("/v1/ws", websocket)
    add_routes(app)
    add_admin_routes(app)
    app.router.add_get("/jalwa.js", _client_module)
    if settings.env == "development":
        add_dev_routes(app, pages=settings.hub.demo_page, gifts=settings.hub.demo_gifts)
    return app


async def _ledger_context(app: web.Application) -> AsyncIterator[None]:
    """The ledger: PostgreSQL when JALWA_DATABASE_URL is set, else in memory."""
    settings, clock = app[SETTINGS], app[CLOCK]
    if settings.database_url is None:
        app[LEDGER] = MemoryLedger(settings.billing, now=clock.time)
        yield
        return
    pool = await asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=8, reset=_keep_session
    )
    try:
        if settings.migrate_on_start:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        app[LEDGER] = app[METRICS].timed(PgLedger(pool, settings.billing), "postgres")
        app[PG_POOL] = pool
        yield
    finally:
        await pool.close()


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The ledger never changes session state: skip asyncpg's reset round trip on release."""


async def _chat_context(app: web.Application) -> AsyncIterator[None]:
    """The chat store: MongoDB when JALWA_MONGO_URL is set, else in memory."""
    settings, clock = app[SETTINGS], app[CLOCK]
    if settings.mongo_url is None:
        app[CHAT_STORE] = MemoryChat(now=clock.time)
        yield
        return
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    try:
        store = MongoChat(client, settings.chat.database, now=clock.time)
        await store.ensure_indexes()
        app[CHAT_STORE] = app[METRICS].timed(store, "mongo")
        app[MONGO] = client
        yield
    finally:
        await client.close()


def _hub_context(
    hooks: CallHooks | None,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, clock = app[SETTINGS], app[CLOCK]
        client: aioredis.Redis | None = None
        presence: PresenceStore
        directory: CallDirectory
        resume: ResumeStore
        match_store: MatchStore
        router: Router = LocalRouter()
        hub_settings = settings.hub
        m = settings.match
        limits = Limits(
            scan_max=m.scan_max,
            avoid_recent_s=m.avoid_recent_s,
            reserve_s=m.reserve_s,
            nearby_max_km=m.nearby_max_km,
        )
        if settings.redis_url is not None:
            # Waits for a free connection instead of failing (redis-py's default pool
            # raises past 100 at once, which a reconnect storm of a few thousand users hits).
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.redis_max_connections, timeout=10
            )
            client = aioredis.Redis.from_pool(pool)  # closes the pool with the client
            await client.ping()
            presence = RedisPresence(
                client,
                settings.node_id,
                prefix=settings.presence.key_prefix,
                ttl_s=settings.presence.ttl_s,
                node_ttl_s=settings.presence.node_ttl_s,
            )
            router = RedisRouter(client, settings.node_id, prefix=settings.presence.key_prefix)
            directory = RedisCallDirectory(
                client, prefix=settings.presence.key_prefix, ttl_s=settings.presence.node_ttl_s
            )
            resume = RedisResume(
                client,
                prefix=settings.presence.key_prefix,
                window_s=hub_settings.resume_window_s,
                max_frames=hub_settings.resume_buffer_frames,
            )
            match_store = RedisMatch(
                client,
                prefix=settings.presence.key_prefix,
                limits=limits,
                ticket_ttl_s=m.timeout_s + 60,
            )
            timed = app[METRICS].timed
            presence, directory = timed(presence, "redis"), timed(directory, "redis")
            resume, match_store = timed(resume, "redis"), timed(match_store, "redis")
        else:
            memory_directory = MemoryCallDirectory(clock, ttl_s=settings.presence.node_ttl_s)
            directory = memory_directory
            resume = MemoryResume(
                clock,
                window_s=hub_settings.resume_window_s,
                max_frames=hub_settings.resume_buffer_frames,
            )
            world = MemoryWorld(clock)
            presence = MemoryPresence(
                world,
                settings.node_id,
                ttl_s=settings.presence.ttl_s,
                node_ttl_s=settings.presence.node_ttl_s,
            )
            match_store = MemoryMatch(clock, world.live, memory_directory.busy, limits)
        ledger_hooks = LedgerHooks(app[LEDGER], settings.billing)
        beat_every = min(settings.presence.node_ttl_s, settings.presence.ttl_s) / 3
        sfu = _build_sfu(settings, clock) if settings.media.mode == "sfu" else None
        ledger = app[LEDGER]

        async def balance_of(user_id: str) -> int | None:
            if hooks is not None:
                return None  # hooks given by a test: calls cost what they say, not the ledger
            return (await ledger.balances(user_id)).wallet

        async def rate_of(user_id: str) -> int:
            return 0 if hooks is not None else await ledger_hooks.rate_of(user_id)

        wings = assemble(
            settings.hub,
            presence,
            directory,
            clock=clock,
            hooks=hooks or ledger_hooks,
            router=router,
            resume=resume,
            media_server=sfu,
            record_policy=settings.media.recording,
            ice_servers=_ice_servers(settings, clock),
            chat=lambda port: ChatService(app[CHAT_STORE], port, settings.chat, clock),
            records_every=round(settings.presence.ttl_s / 3 / beat_every) or 1,
            match=MatchParts(match_store, m, rate_of, balance_of, settings.billing.default_rate),
        )
        hub, calls_wing, presence_wing = wings.hub, wings.calls, wings.presence
        assert wings.chat is not None
        chat = wings.chat
        Gifts(hub, calls_wing.active_peer, app[LEDGER], settings.billing).install()
        app[HUB], app[CALLS], app[PRESENCE], app[CHAT] = hub, calls_wing, presence_wing, chat
        if sfu is not None:
            sfu.on_media_failed = calls_wing.media_failed
            app[SFU] = sfu
        events = HubBillingEvents(hub, calls_wing)
        billing_loop = BillingLoop(
            app[LEDGER],
            settings.billing,
            events,
            before_round=ledger_hooks.flush_closes,
            on_round=app[METRICS].billing_round,
        )
        operations = build_operations(
            settings,
            clock=clock,
            wings=wings,
            ledger=app[LEDGER],
            chat_store=app[CHAT_STORE],
            billing_loop=billing_loop,
            metrics=app[METRICS],
            sfu=sfu,
            pool=app.get(PG_POOL),
            redis=client,
            mongo=app.get(MONGO),
        )
        app[OPERATIONS] = operations
        await presence_wing.beat()
        await hub.start_routing()
        tasks = [
            asyncio.create_task(calls_wing.run_timers()),
            asyncio.create_task(_every(beat_every, presence_wing.beat, "presence beat")),
            asyncio.create_task(_every(beat_every, calls_wing.beat, "call directory beat")),
            asyncio.create_task(billing_loop.run()),
            asyncio.create_task(_every(beat_every, operations.stats.post_own, "node board")),
        ]
        if wings.match is not None:
            tasks.append(asyncio.create_task(wings.match.run()))
            resync = wings.match.resync
            tasks.append(asyncio.create_task(_every(beat_every, resync, "match pools resync")))
        if settings.billing.orphan_after_s > 0:
            # Minutes are charged only after a touch (the node shows life): touch often.
            period = settings.billing.keepalive_s
            keepalive = functools.partial(events.keep_calls_alive, app[LEDGER])
            tasks.append(asyncio.create_task(_every(period, keepalive, "call keepalive")))
        stalls = app[METRICS].stalls
        tasks.append(asyncio.create_task(stalls.sample_lag()))
        log.info("hub up: node %s, presence in %s", settings.node_id, type(presence).__name__)
        try:
            with stalls.timing_gc():
                yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ledger_hooks.aclose()
            await router.close()
            if sfu is not None:
                await sfu.close()
            with contextlib.suppress(Exception):
                await presence.retire()
            await presence.close()
            if client is not None:
                await client.aclose()

    return ctx


def _build_sfu(settings: Settings, clock: Clock) -> Sfu:
    """The SFU with explicit ICE servers: the configured ones plus TURN for itself."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in settings.hub.ice_servers
    ]
    for minted in turn_ice_servers(settings.turn, "sfu", clock.time()):
        servers.append(
            RTCIceServer(
                urls=minted["urls"], username=minted["username"], credential=minted["credential"]
            )
        )
    return Sfu(settings.media, RTCConfiguration(iceServers=servers), clock=clock)


def _ice_servers(settings: Settings, clock: Clock) -> Callable[[str], list[IceServerInfo]]:
    """What ``welcome`` offers a user: the configured servers plus short-lived TURN
    credentials of their own (DESIGN §6)."""
    configured = [
        IceServerInfo(urls=s.urls, username=s.username, credential=s.credential)
        for s in settings.hub.ice_servers
    ]

    def servers(user_id: str) -> list[IceServerInfo]:
        minted = turn_ice_servers(settings.turn, user_id, clock.time())
        return [*configured, *(IceServerInfo(**server) for server in minted)]

    return servers


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
        await app[CALLS].shutdown()
        await hub.shutdown()
        # Let the pumps flush call.ended and the 1012 close before the loop stops.
        for _ in range(20):
            if not hub.sessions:
                break
            await asyncio.sleep(0.05)


async def _client_module(request: web.Request) -> web.Response:
    """jalwa.js, the browser client (docs/client.md), for apps to import or copy."""
    code = resources.files("signalling").joinpath("static/jalwa.js").read_text("utf-8")
    return web.Response(text=code, content_type="text/javascript")
