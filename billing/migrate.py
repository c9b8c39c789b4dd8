"""Apply billing's SQL migrations (billing/migrations/NNNN_name.sql, shipped as package data).

Pending files run in name order inside ONE transaction that first takes a transaction-level
advisory lock, so two processes starting at once apply each file exactly once: the second
waits for the lock, then finds the names already in ``schema_migrations``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Any constant works if nothing else uses it: ASCII "jalwabil" as a signed 64-bit key.
MIGRATION_LOCK = 0x6A616C7761_62696C

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every shipped migration, in the order they apply."""
    folder = resources.files("billing").joinpath("migrations")
    found = [
        (item.name, item.read_text(encoding="utf-8"))
        for item in folder.iterdir()
        if item.name.endswith(".sql")
    ]
    return sorted(found)


async def migrate(conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> list[str]:
    """Apply pending migrations; returns the names applied now (empty when up to date)."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(SCHEMA_MIGRATIONS)
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied_now.append(name)
    return applied_now
