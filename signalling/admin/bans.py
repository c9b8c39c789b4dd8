"""Bans: who may not connect (nor so be matched or called). Stored, never only in memory:
in PostgreSQL when the ledger is there (table ``bans``, migration 0003), else in process
memory for the embedded single-node default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import asyncpg


@dataclass(frozen=True, slots=True)
class Ban:
    user_id: str
    banned_by: str
    reason: str
    banned_at: float  # unix seconds


class BanStore(Protocol):
    async def ban(self, user_id: str, *, by: str, reason: str) -> Ban:
        """Ban the user; banning a banned user keeps (and returns) the first ban."""

    async def unban(self, user_id: str) -> bool:
        """Lift the ban; False if there was none."""

    async def get(self, user_id: str) -> Ban | None: ...


class MemoryBans:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._bans: dict[str, Ban] = {}

    async def ban(self, user_id: str, *, by: str, reason: str) -> Ban:
        return self._bans.setdefault(user_id, Ban(user_id, by, reason, self._now()))

    async def unban(self, user_id: str) -> bool:
        return self._bans.pop(user_id, None) is not None

    async def get(self, user_id: str) -> Ban | None:
        return self._bans.get(user_id)


_BAN = """
WITH new AS (
    INSERT INTO bans (user_id, banned_by, reason) VALUES ($1, $2, $3)
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, banned_by, reason, banned_at
)
SELECT * FROM new
UNION ALL
SELECT user_id, banned_by, reason, banned_at FROM bans
WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM new)
"""
_GET = "SELECT user_id, banned_by, reason, banned_at FROM bans WHERE user_id = $1"
_UNBAN = "DELETE FROM bans WHERE user_id = $1 RETURNING 1"


class PgBans:
    """On the ledger's pool (which the caller owns)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def ban(self, user_id: str, *, by: str, reason: str) -> Ban:
        row = await self._pool.fetchrow(_BAN, user_id, by, reason)
        assert row is not None  # inserted now, or there already
        return _ban(row)

    async def unban(self, user_id: str) -> bool:
        return await self._pool.fetchval(_UNBAN, user_id) is not None

    async def get(self, user_id: str) -> Ban | None:
        row = await self._pool.fetchrow(_GET, user_id)
        return None if row is None else _ban(row)


def _ban(row: asyncpg.Record) -> Ban:
    return Ban(row["user_id"], row["banned_by"], row["reason"], row["banned_at"].timestamp())
