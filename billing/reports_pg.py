"""``Reports`` in SQL over PgLedger's tables (the twin of reports_memory). Windows are on
the database clock, like billing; the BRIN indexes of migration 0003 keep them cheap."""

from __future__ import annotations

import asyncpg

from billing.ledger import CallRecord
from billing.reports import Activity, Figures

# One round trip: both windows over the entries since the earlier of their starts.
ACTIVITY = """
WITH bounds AS (
    SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           now() - interval '1 hour' AS hour
), since AS (
    SELECT least(day, hour) AS t FROM bounds
), recent AS (
    SELECT j.id, j.kind, j.created_at FROM journal j, since
    WHERE j.created_at >= since.t AND j.kind IN ('call_minute', 'gift')
), moved AS (
    SELECT r.id, r.kind, r.created_at, p.amount,
           a.kind = 'wallet' AND p.amount < 0 AS paid,
           a.owner = 'platform' AND a.kind = 'revenue' AS platform
    FROM recent r
    JOIN postings p ON p.entry_id = r.id AND p.entry_id >= (SELECT min(id) FROM recent)
    JOIN accounts a ON a.id = p.account_id
), windows AS (
    SELECT 'today' AS w, day AS t FROM bounds UNION ALL SELECT 'hour', hour FROM bounds
)
SELECT w.w,
    (SELECT count(*) FROM calls c WHERE c.started_at >= w.t) AS calls_started,
    (SELECT count(*) FROM recent r WHERE r.created_at >= w.t AND r.kind = 'call_minute')
        AS call_minutes,
    (SELECT count(*) FROM recent r WHERE r.created_at >= w.t AND r.kind = 'gift') AS gifts,
    (SELECT coalesce(-sum(amount), 0) FROM moved m
     WHERE m.created_at >= w.t AND m.paid AND m.kind = 'call_minute') AS call_coins,
    (SELECT coalesce(-sum(amount), 0) FROM moved m
     WHERE m.created_at >= w.t AND m.paid AND m.kind = 'gift') AS gift_coins,
    (SELECT coalesce(sum(amount), 0) FROM moved m WHERE m.created_at >= w.t AND m.platform)
        AS platform_revenue,
    (SELECT count(*) FROM calls WHERE state = 'active') AS active_calls
FROM windows w
"""

ACTIVE_CALLS = """
SELECT call_id, payer, host, rate, share_bps, started_at, ended_at, state, end_reason,
       minutes, coins
FROM calls WHERE state = 'active' ORDER BY started_at, call_id LIMIT $1
"""


class PgReports:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def activity(self) -> Activity:
        rows = {row["w"]: row for row in await self._pool.fetch(ACTIVITY)}
        return Activity(
            today=_figures(rows["today"]),
            last_hour=_figures(rows["hour"]),
            active_calls=int(rows["today"]["active_calls"]),
        )

    async def active_calls(self, limit: int) -> list[CallRecord]:
        return [
            CallRecord(
                row["call_id"],
                row["payer"],
                row["host"],
                row["rate"],
                row["share_bps"],
                row["started_at"].timestamp(),
                None,
                "active",
                None,
                row["minutes"],
                row["coins"],
            )
            for row in await self._pool.fetch(ACTIVE_CALLS, limit)
        ]


def _figures(row: asyncpg.Record) -> Figures:
    call_coins, gift_coins = int(row["call_coins"]), int(row["gift_coins"])
    return Figures(
        calls_started=int(row["calls_started"]),
        call_minutes=int(row["call_minutes"]),
        call_coins=call_coins,
        gifts=int(row["gifts"]),
        gift_coins=gift_coins,
        coins_spent=call_coins + gift_coins,
        platform_revenue=int(row["platform_revenue"]),
    )
