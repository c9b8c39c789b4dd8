"""Every ``web.AppKey`` of the application, in one place: what ``app.py`` builds and the
HTTP/WebSocket edges read. Wings never read the app; they are given what they need."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from pymongo import AsyncMongoClient

from billing.ledger import Ledger
from billing.settings import BillingSettings
from media.sfu import Sfu

from .admin.metrics import Metrics
from .admin.ops import Operations
from .auth import KeyMaterial, TokenVerifier
from .calls.service import Calls
from .chat.handlers import ChatService
from .chat.store import ChatStore
from .clock import Clock
from .hub import Hub
from .limits import ConnectionLimiter
from .presence.service import Presence
from .settings import HubSettings, Settings

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", KeyMaterial)
CLOCK = web.AppKey("clock", Clock)
HUB_SETTINGS = web.AppKey("hub_settings", HubSettings)
BILLING_SETTINGS = web.AppKey("billing_settings", BillingSettings)
VERIFIER = web.AppKey("verifier", TokenVerifier)
CONNECTIONS = web.AppKey("connections", ConnectionLimiter)
LEDGER = web.AppKey("ledger", Ledger)
CHAT_STORE = web.AppKey("chat_store", ChatStore)
HUB = web.AppKey("hub", Hub)
CALLS = web.AppKey("calls", Calls)
PRESENCE = web.AppKey("presence", Presence)
CHAT = web.AppKey("chat", ChatService)
SFU = web.AppKey("sfu", Sfu)
METRICS = web.AppKey("metrics", Metrics)
OPERATIONS = web.AppKey("operations", Operations)
PG_POOL: web.AppKey[asyncpg.Pool[asyncpg.Record]] = web.AppKey("pg_pool")
MONGO: web.AppKey[AsyncMongoClient[dict[str, Any]]] = web.AppKey("mongo")
