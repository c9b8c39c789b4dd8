"""Reaching the real services tests need; a missing one fails loudly with how to start it."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

REDIS_URL = os.environ.get("JALWA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def require_redis() -> str:
    url = urlparse(REDIS_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), 2):
            pass
    except OSError as exc:
        raise AssertionError(
            f"these tests need Redis at {REDIS_URL} ({exc}); start it with: {REDIS_START}"
        ) from exc
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


START_MONGO = (
    "scripts/mongo-wire start && export JALWA_TEST_MONGO_URL=$(scripts/mongo-wire url)  "
    "(or run ./scripts/test, which does both)"
)


def require_mongo() -> str:
    """The URL of the MongoDB wire server the test command started."""
    url = os.environ.get("JALWA_TEST_MONGO_URL", "")
    if not url:
        raise AssertionError(
            f"these tests need a MongoDB wire server; start one with: {START_MONGO}"
        )
    return url


async def forget_prefix(prefix: str) -> None:
    """Delete every Redis key a test's nodes wrote under ``prefix`` (some live a day)."""
    from redis.asyncio import Redis

    client = Redis.from_url(require_redis())
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
