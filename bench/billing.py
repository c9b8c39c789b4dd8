"""Billing throughput: the real set-based loop against one transaction per call.

Run: ``.venv/bin/python -m bench.billing [--sizes 1000,10000,100000] [--batch 5000]``

For each N, twice on an identically prepared fresh database (created, migrated, dropped
WITH (FORCE) afterwards):

- N payers funded by a recharge, N hosts, and N active calls whose minute 1 is paid,
  written in bulk with SQL that produces exactly what ``recharge`` + ``open_call`` would
  (same keys, request hashes, meta, postings and balances; checked once against the real
  API on a small N before anything is measured). Then the contract suite's time travel:
  every active call's ``started_at`` / ``next_due`` move back by one minute and a second,
  so exactly one minute (minute 2) is due for every call. Set-up is not measured.
- batch path (measured): ``BillingLoop.run_once`` (one ``PgLedger.bill_due(batch)`` per
  round, events to a no-op sink) repeated until a round comes back short, exactly as
  ``BillingLoop.run`` drains each interval.
- baseline (measured): the classic one-transaction-per-call worker written here against
  the same schema, sequential over one connection: list due call ids (no lock), then per
  call BEGIN; SELECT the call FOR UPDATE; SELECT the payer wallet FOR UPDATE; check the
  balance; INSERT the journal entry cm:<call>:<minute>; INSERT its postings; UPDATE the
  wallet, host earnings and platform balances; UPDATE the call; COMMIT. For large N it
  bills only the first ``--baseline-cap`` calls (in due order) and its rate comes from
  that sample; the output says so.

After each measured run: exactly the expected number of call-minutes billed (journal and
calls agree), nothing else, and ``PgLedger.check() == []``. When the baseline billed every
call, both databases must also hold the same books (balances, journal keys and hashes,
postings, call counters), compared by digest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlparse, urlunparse

import asyncpg

from bench.loop import loop_factory
from billing.ledger import CallTerms, Stop, Tick
from billing.ledger_pg import PgLedger
from billing.loop import BillingLoop
from billing.migrate import migrate
from billing.rules import INSUFFICIENT_BALANCE, PLATFORM, call_minute_key, host_part, request_hash
from billing.settings import BillingSettings

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MINUTE = 60
RATE = 10  # coins per minute
SHARE_BPS = 7000  # host gets 7, platform 3 per minute
FUNDS = 1000  # each payer's recharge: 100 minutes
PROVIDER = "bench"
SETTINGS = BillingSettings(minute_seconds=MINUTE, default_rate=RATE, host_share_bps=SHARE_BPS)
GOAL_RATE = 10_000.0  # call-minutes/s
GOAL_RATIO = 8.0  # batch / baseline in the same run


# --- databases ----------------------------------------------------------------------------


def base_dsn(override: str | None) -> str:
    return override or os.environ.get("JALWA_TEST_DATABASE_URL", DEFAULT_DSN)


@asynccontextmanager
async def fresh_database(dsn: str) -> AsyncIterator[str]:
    """A new migrated database; yields its DSN and drops it WITH (FORCE) afterwards."""
    admin: Conn = await asyncpg.connect(dsn, timeout=10)
    name = f"jalwa_bench_{uuid.uuid4().hex}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = urlunparse(urlparse(dsn)._replace(path=f"/{name}"))
        conn: Conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- bulk set-up: what N x (recharge + open_call) would write -----------------------------
# Request hashes are computed in Python with billing.ledger.request_hash itself, so the
# set-up follows the ledger's hashing whatever it becomes.

SETUP_TEMP = """
CREATE TEMP TABLE bench_calls (
    i        integer PRIMARY KEY,
    payer    text    NOT NULL,
    host     text    NOT NULL,
    call_id  text    NOT NULL,
    rc_hash  text    NOT NULL,
    cm_hash  text    NOT NULL,
    wallet   bigint,
    earnings bigint
) ON COMMIT DROP
"""

SETUP_ROWS = """
INSERT INTO bench_calls (i, payer, host, call_id, rc_hash, cm_hash)
SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
"""

SETUP_CLEARING = """
INSERT INTO accounts (owner, kind, is_user) VALUES ($1, 'clearing', false) RETURNING id
"""

SETUP_ACCOUNTS = """
INSERT INTO accounts (owner, kind, is_user)
SELECT owner, kind, true FROM (
    SELECT i, 0 AS o, payer AS owner, 'wallet' AS kind FROM bench_calls
    UNION ALL
    SELECT i, 1, host, 'earnings' FROM bench_calls
) u
ORDER BY o, i
"""

SETUP_ACCOUNT_IDS = """
UPDATE bench_calls b SET wallet = w.id, earnings = e.id
FROM accounts w, accounts e
WHERE w.owner = b.payer AND w.kind = 'wallet' AND e.owner = b.host AND e.kind = 'earnings'
"""

SETUP_RECHARGES = """
INSERT INTO journal (key, request_hash, kind, meta)
SELECT 'rc:' || $1::text || ':t' || i,
       rc_hash,
       'recharge',
       jsonb_build_object('provider', $1::text, 'txn_id', 't' || i, 'wallet', $2::bigint,
                          'earnings', 0, 'withdrawal_pending', 0)
FROM bench_calls ORDER BY i
"""

SETUP_RECHARGE_POSTINGS = """
INSERT INTO postings (entry_id, account_id, amount)
SELECT j.id, m.account_id, m.amount
FROM bench_calls b
JOIN journal j ON j.key = 'rc:' || $1::text || ':t' || b.i
CROSS JOIN LATERAL (VALUES ($2::bigint, -$3::bigint), (b.wallet, $3::bigint))
    AS m (account_id, amount)
ORDER BY j.id
"""

SETUP_FIRST_MINUTES = """
INSERT INTO journal (key, request_hash, kind, meta)
SELECT 'cm:' || call_id || ':1',
       cm_hash,
       'call_minute',
       jsonb_build_object('call_id', call_id, 'balance', $1::bigint)
FROM bench_calls ORDER BY i
"""

SETUP_FIRST_MINUTE_POSTINGS = """
INSERT INTO postings (entry_id, account_id, amount)
SELECT j.id, m.account_id, m.amount
FROM bench_calls b
JOIN journal j ON j.key = 'cm:' || b.call_id || ':1'
CROSS JOIN LATERAL (VALUES (b.wallet, -$1::bigint), (b.earnings, $2::bigint),
                           ($3::bigint, $1::bigint - $2::bigint)) AS m (account_id, amount)
WHERE m.amount <> 0
ORDER BY j.id
"""

SETUP_BALANCES = """
UPDATE accounts a SET balance = s.total
FROM (SELECT account_id, sum(amount)::bigint AS total FROM postings GROUP BY account_id) s
WHERE a.id = s.account_id
"""

SETUP_CALLS = """
INSERT INTO calls (call_id, payer, host, rate, share_bps, minute_s, payer_wallet,
                   host_earnings, started_at, next_due, minutes, coins, state)
SELECT call_id, payer, host, $1::bigint, $2::integer, $3::integer, wallet, earnings,
       now(), now() + $3::integer * interval '1 second', 1, $1::bigint, 'active'
FROM bench_calls ORDER BY i
"""

# The contract suite's test-only time travel: the database clock cannot move, the calls do.
TIME_TRAVEL = """
UPDATE calls SET started_at = started_at - $1 * interval '1 second',
                 next_due = next_due - $1 * interval '1 second'
WHERE state = 'active'
"""


async def platform_id(conn: Conn) -> int:
    found: int | None = await conn.fetchval(
        "SELECT id FROM accounts WHERE owner = $1 AND kind = $2", *PLATFORM
    )
    assert found is not None, "the migration creates the platform account"
    return found


def payer_name(i: int) -> str:
    return f"payer-{i}"


def host_name(i: int) -> str:
    return f"host-{i}"


def call_name(i: int) -> str:
    return f"call-{i}"


def txn_name(i: int) -> str:
    return f"t{i}"


def setup_rows(n: int) -> tuple[list[int], list[str], list[str], list[str], list[str], list[str]]:
    """Columns of bench_calls: i, payer, host, call id and the two request hashes, exactly
    as PgLedger.recharge / open_call compute them."""
    ids = list(range(1, n + 1))
    return (
        ids,
        [payer_name(i) for i in ids],
        [host_name(i) for i in ids],
        [call_name(i) for i in ids],
        [request_hash("recharge", PROVIDER, txn_name(i), payer_name(i), FUNDS) for i in ids],
        [
            request_hash("open_call", call_name(i), payer_name(i), host_name(i), RATE, SHARE_BPS)
            for i in ids
        ],
    )


async def bulk_setup(dsn: str, n: int) -> None:
    """N funded payers, N hosts, N active calls with minute 1 paid; then minute 2 due."""
    conn: Conn = await asyncpg.connect(dsn)
    try:
        to_host = host_part(RATE, SHARE_BPS)
        async with conn.transaction():
            await conn.execute(SETUP_TEMP)
            await conn.execute(SETUP_ROWS, *setup_rows(n))
            clearing: int = await conn.fetchval(SETUP_CLEARING, f"ext:{PROVIDER}")
            await conn.execute(SETUP_ACCOUNTS)
            await conn.execute(SETUP_ACCOUNT_IDS)
            await conn.execute(SETUP_RECHARGES, PROVIDER, FUNDS)
            await conn.execute(SETUP_RECHARGE_POSTINGS, PROVIDER, clearing, FUNDS)
            await conn.execute(SETUP_FIRST_MINUTES, FUNDS - RATE)
            await conn.execute(SETUP_FIRST_MINUTE_POSTINGS, RATE, to_host, await platform_id(conn))
            await conn.execute(SETUP_BALANCES)
            await conn.execute(SETUP_CALLS, RATE, SHARE_BPS, MINUTE)
        await time_travel(conn)
        # Both paths start from the same clean, analysed, checkpointed state.
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        due = await conn.fetchval(
            "SELECT count(*) FROM calls WHERE state = 'active' AND next_due < now()"
        )
        assert due == n, f"set-up made {due} calls due, wanted {n}"
    finally:
        await conn.close()


async def time_travel(conn: Conn) -> None:
    # Minute 2 falls due one second ago; minute 3 only MINUTE - 1 seconds from now (each
    # run bills well within that, and the exact count after it would catch a slow one).
    await conn.execute(TIME_TRAVEL, float(MINUTE + 1))


async def api_setup(dsn: str, n: int) -> None:
    """The same books as ``bulk_setup`` made through the real API (slow; a small N only)."""
    pool: Pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        ledger = PgLedger(pool, SETTINGS)
        for i in range(1, n + 1):
            await ledger.recharge(PROVIDER, txn_name(i), payer_name(i), FUNDS)
        for i in range(1, n + 1):
            await ledger.open_call(
                CallTerms(call_name(i), payer_name(i), host_name(i), RATE, SHARE_BPS)
            )
        async with pool.acquire() as conn:
            await conn.execute(TIME_TRAVEL, float(MINUTE + 1))
    finally:
        await pool.close()


# Everything the books say, as digests (not meta of later minutes: bill_due writes none).
DIGEST = """
SELECT
    (SELECT md5(string_agg(owner || '/' || kind || '=' || balance, ',' ORDER BY owner, kind))
     FROM accounts) AS accounts,
    (SELECT md5(string_agg(key || '/' || request_hash || '/' || kind || '/'
                           || coalesce(meta::text, '-'), ',' ORDER BY key))
     FROM journal) AS journal,
    (SELECT md5(string_agg(j.key || '/' || a.owner || '/' || a.kind || '=' || p.amount, ','
                           ORDER BY j.key, a.owner, a.kind))
     FROM postings p JOIN journal j ON j.id = p.entry_id JOIN accounts a ON a.id = p.account_id
    ) AS postings,
    (SELECT md5(string_agg(concat_ws('/', call_id, payer, host, rate, share_bps, minute_s,
                                     minutes, coins, state, end_reason,
                                     extract(epoch FROM next_due - started_at)),
                           ',' ORDER BY call_id))
     FROM calls) AS calls
"""


async def digest(dsn: str) -> dict[str, str]:
    conn: Conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(DIGEST)
        assert row is not None
        return dict(row.items())
    finally:
        await conn.close()


async def check_bulk_setup_matches_api(dsn: str, n: int = 5) -> None:
    """The bulk set-up writes exactly what the real recharge + open_call write."""
    async with fresh_database(dsn) as bulk, fresh_database(dsn) as api:
        await bulk_setup(bulk, n)
        await api_setup(api, n)
        got, want = await digest(bulk), await digest(api)
        assert got == want, f"bulk set-up differs from the API's books: {got} != {want}"
        for url in (bulk, api):
            await assert_clean(url)


# --- the two measured paths ---------------------------------------------------------------


class NullEvents:
    """The loop's event sink, doing nothing: only the ledger is measured."""

    async def minute_charged(self, tick: Tick, *, low_balance: bool) -> None:
        return None

    async def out_of_money(self, stop: Stop) -> None:
        return None

    async def ledger_unreachable(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Run:
    billed: int  # call-minutes charged in the measured span
    stopped: int  # calls ended for lack of money (0 here: every payer can pay)
    seconds: float
    rounds: list[float]  # seconds per bill_due round (batch) or per call (baseline)

    @property
    def rate(self) -> float:
        return self.billed / self.seconds if self.seconds > 0 else 0.0


async def run_batch_path(dsn: str, batch: int) -> Run:
    pool: Pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
    try:
        settings = SETTINGS.model_copy(update={"batch_size": batch})
        loop = BillingLoop(PgLedger(pool, settings), settings, NullEvents())
        billed = stopped = 0
        rounds: list[float] = []
        start = time.perf_counter()
        while True:  # BillingLoop.run's drain: until a round comes back short
            t0 = time.perf_counter()
            result = await loop.run_once()
            rounds.append(time.perf_counter() - t0)
            billed += len(result.ticks)
            stopped += len(result.stopped)
            if len(result.ticks) + len(result.stopped) < batch:
                break
        seconds = time.perf_counter() - start
        return Run(billed, stopped, seconds, rounds)
    finally:
        await pool.close()


LIST_DUE = """
SELECT call_id FROM calls
WHERE state = 'active' AND next_due < now()
ORDER BY next_due, call_id
LIMIT $1
"""

LOCK_CALL = """
SELECT payer_wallet, host_earnings, rate, share_bps, minutes
FROM calls
WHERE call_id = $1 AND state = 'active' AND next_due < now()
FOR UPDATE
"""

LOCK_WALLET = "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE"

INSERT_ENTRY = """
INSERT INTO journal (key, request_hash, kind) VALUES ($1, $2, 'call_minute') RETURNING id
"""

# All of an entry's postings in one statement: the postings_balanced trigger checks each.
INSERT_POSTINGS = """
INSERT INTO postings (entry_id, account_id, amount)
SELECT $1, account_id, amount FROM unnest($2::bigint[], $3::bigint[]) AS m (account_id, amount)
"""

MOVE_BALANCE = "UPDATE accounts SET balance = balance + $2 WHERE id = $1"

ADVANCE_CALL = """
UPDATE calls SET minutes = minutes + 1, coins = coins + rate,
                 next_due = next_due + minute_s * interval '1 second'
WHERE call_id = $1
"""

END_CALL = """
UPDATE calls SET state = 'ended', end_reason = $2, ended_at = now() WHERE call_id = $1
"""


async def bill_one_call(conn: Conn, call_id: str, platform: int) -> str | None:
    """One call-minute in one transaction, the classic way. Returns 'billed', 'stopped' or
    None (no longer due: someone else got it)."""
    async with conn.transaction():
        call = await conn.fetchrow(LOCK_CALL, call_id)
        if call is None:
            return None
        rate: int = call["rate"]
        balance: int = await conn.fetchval(LOCK_WALLET, call["payer_wallet"])
        if balance < rate:
            await conn.execute(END_CALL, call_id, INSUFFICIENT_BALANCE)
            return "stopped"
        minute = call["minutes"] + 1
        entry: int = await conn.fetchval(
            INSERT_ENTRY,
            call_minute_key(call_id, minute),
            request_hash("call_minute", call_id, minute, rate),
        )
        to_host = host_part(rate, call["share_bps"])
        moves = [
            (account, amount)
            for account, amount in (
                (call["payer_wallet"], -rate),
                (call["host_earnings"], to_host),
                (platform, rate - to_host),
            )
            if amount != 0
        ]
        await conn.execute(
            INSERT_POSTINGS, entry, [a for a, _ in moves], [amount for _, amount in moves]
        )
        for account, amount in moves:  # wallet, host earnings, platform: the lock order
            await conn.execute(MOVE_BALANCE, account, amount)
        await conn.execute(ADVANCE_CALL, call_id)
        return "billed"


async def run_baseline(dsn: str, batch: int, cap: int) -> Run:
    conn: Conn = await asyncpg.connect(dsn)
    try:
        platform = await platform_id(conn)
        billed = stopped = 0
        per_call: list[float] = []
        start = time.perf_counter()
        while billed + stopped < cap:
            due = await conn.fetch(LIST_DUE, min(batch, cap - billed - stopped))
            if not due:
                break
            for row in due:
                t0 = time.perf_counter()
                outcome = await bill_one_call(conn, row["call_id"], platform)
                per_call.append(time.perf_counter() - t0)
                billed += outcome == "billed"
                stopped += outcome == "stopped"
        seconds = time.perf_counter() - start
        return Run(billed, stopped, seconds, per_call)
    finally:
        await conn.close()


# --- verification -------------------------------------------------------------------------

COUNTS = """
SELECT
    (SELECT count(*) FROM journal WHERE kind = 'call_minute') AS minutes_in_journal,
    (SELECT count(*) FROM journal WHERE key LIKE 'cm:%:2') AS minute_two,
    (SELECT count(*) FROM calls WHERE state = 'active' AND minutes = 2) AS at_two,
    (SELECT count(*) FROM calls WHERE state = 'active' AND minutes = 1) AS at_one,
    (SELECT count(*) FROM calls WHERE state <> 'active') AS ended,
    (SELECT count(*) FROM calls WHERE state = 'active' AND next_due < now()) AS still_due
"""


async def assert_clean(dsn: str) -> None:
    pool: Pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        problems = await PgLedger(pool, SETTINGS).check()
    finally:
        await pool.close()
    assert problems == [], f"ledger check failed: {problems}"


async def verify(dsn: str, n: int, run: Run, expected: int) -> None:
    """Exactly ``expected`` call-minutes billed (minute 2 of the first calls), nothing
    else, and the books are clean."""
    assert (run.billed, run.stopped) == (expected, 0), (run.billed, run.stopped, expected)
    conn: Conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(COUNTS)
        assert row is not None
        got = dict(row.items())
    finally:
        await conn.close()
    want = {
        "minutes_in_journal": n + expected,
        "minute_two": expected,
        "at_two": expected,
        "at_one": n - expected,
        "ended": 0,
        "still_due": n - expected,
    }
    assert got == want, f"billed the wrong minutes: {got} != {want}"
    await assert_clean(dsn)


# --- driver -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    n: int
    batch: Run
    baseline: Run
    sampled: bool
    same_books: bool | None  # None: baseline was a sample, nothing to compare
    setup_s: float


async def timed(step: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await step()
    return time.perf_counter() - t0


async def measure(dsn: str, n: int, batch: int, cap: int) -> Result:
    expected_baseline = min(n, cap)
    async with fresh_database(dsn) as db:
        setup_s = await timed(lambda: bulk_setup(db, n))
        batch_run = await run_batch_path(db, batch)
        await verify(db, n, batch_run, n)
        batch_digest = await digest(db) if expected_baseline == n else None
    async with fresh_database(dsn) as db:
        setup_s += await timed(lambda: bulk_setup(db, n))
        base_run = await run_baseline(db, batch, cap)
        await verify(db, n, base_run, expected_baseline)
        same: bool | None = None
        if batch_digest is not None:
            same = await digest(db) == batch_digest
            assert same, "the two paths left different books"
    return Result(n, batch_run, base_run, expected_baseline < n, same, setup_s)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values) * 1000:.2f} ms,"
        f" max {max(values) * 1000:.2f} ms over {len(values)}"
    )


def report_line(r: Result) -> str:
    ratio = r.batch.rate / r.baseline.rate if r.baseline.rate else float("inf")
    met = r.batch.rate >= GOAL_RATE and ratio >= GOAL_RATIO
    base = fmt_rate(r.baseline.rate) + (f" (sample {r.baseline.billed:,})" if r.sampled else "")
    return (
        f"| {r.n:>7,} | {fmt_rate(r.batch.rate):>10} | {base:>24} | {ratio:>6.1f}x"
        f" | {'yes' if met else 'NO':>3} |"
    )


async def server_version(dsn: str) -> str:
    conn: Conn = await asyncpg.connect(dsn)
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    dsn = base_dsn(args.dsn)
    sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"cores: {os.cpu_count()} (usable: {affinity}); PostgreSQL {await server_version(dsn)};"
        f" Python {platform.python_version()}; batch {args.batch};"
        f" baseline capped at {args.baseline_cap:,} calls"
    )
    print(f"goal: batch >= {GOAL_RATE:,.0f} call-minutes/s and >= {GOAL_RATIO:.0f}x baseline")
    await check_bulk_setup_matches_api(dsn)
    print("bulk set-up checked against recharge + open_call: same books")
    results: list[Result] = []
    for n in sizes:
        result = await measure(dsn, n, args.batch, args.baseline_cap)
        results.append(result)
        same = {True: "same books", None: "baseline sampled, books not compared"}[result.same_books]
        print(
            f"N={n:,}: batch {result.batch.billed:,} in {result.batch.seconds:.2f} s"
            f" (rounds: {ms(result.batch.rounds)});"
            f" baseline {result.baseline.billed:,} in {result.baseline.seconds:.2f} s"
            f" (per call: {ms(result.baseline.rounds)});"
            f" verified: exact counts, check() == [], {same}; set-up {result.setup_s:.1f} s",
            flush=True,
        )
    print()
    print("| N       | batch cm/s | baseline cm/s            | ratio   | met |")
    print("|---------|-----------:|-------------------------:|--------:|:---:|")
    for result in results:
        print(report_line(result))
    if any(r.sampled for r in results):
        print(
            f"(sample: the baseline billed only the first {args.baseline_cap:,} due calls of"
            " that N; its rate is computed from that sample)"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated N")
    parser.add_argument("--batch", type=int, default=5000, help="bill_due limit per round")
    parser.add_argument(
        "--baseline-cap",
        type=int,
        default=10_000,
        help="bill at most this many calls on the baseline path (rate from the sample)",
    )
    parser.add_argument("--dsn", default=None, help="admin DSN (default JALWA_TEST_DATABASE_URL)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
