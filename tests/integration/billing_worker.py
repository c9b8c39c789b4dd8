"""A billing loop in its own process, bounded in time, for the chaos test.

    python -m tests.integration.billing_worker DSN --minute-seconds N --batch B --seconds S
        [--ticks-out FILE] [--die-after D [--die-min-keys K]]

Runs ``PgLedger.bill_due(B)`` against DSN in a tight loop (like ``BillingLoop.run``, but
with a tiny sleep instead of the loop interval, and only for S seconds), then prints one
JSON summary line on stdout: ``{"ticks", "stops", "rounds", "errors", "seconds"}``.
``--minute-seconds`` only matters to calls this process would open (it opens none); it is
accepted so the worker is configured like the rest of the deployment.

``--ticks-out FILE``: after every committed round, one JSON line with what the round
charged and stopped, flushed at once, so the test can reconcile every reported minute
with the journal (a round is written only after ``bill_due`` returned, i.e. committed).

``--die-after D``: the victim of the test. Once D seconds have passed, the first round
charging at least K minutes (``--die-min-keys``, default 1; after D + 3 s any round with a
minute to charge will do, so the victim dies whatever the load) kills its own process
with SIGKILL right after the round's write statement (APPLY_ROUND: keys claimed, postings
written, balances moved, calls advanced) came back and BEFORE the transaction commits,
i.e. truly mid-batch with the row locks held. It first appends
``{"event": "dying", "keys": [...]}`` to FILE. PostgreSQL then sees the connection drop
and rolls the whole round back; the other workers must bill those minutes exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import asyncpg

from billing.ledger_pg import PgLedger
from billing.pg_statements import APPLY_ROUND
from billing.settings import BillingSettings

if TYPE_CHECKING:
    _Connection = asyncpg.Connection[asyncpg.Record]
else:  # asyncpg's classes are generic only in its stubs
    _Connection = asyncpg.Connection

IDLE_SLEEP_S = 0.005  # a tight loop, but it yields the CPU when nothing is due
DIE_GRACE_S = 3.0  # after this, the victim settles for any batch


class _Victim:
    """When (monotonic) and where the dying worker kills itself."""

    die_at: float | None = None
    min_keys = 1
    out: IO[str] | None = None

    @classmethod
    def now(cls, keys: object) -> bool:
        if cls.die_at is None or not isinstance(keys, list) or not keys:
            return False
        late = time.monotonic() - cls.die_at
        return late >= 0 and (len(keys) >= cls.min_keys or late >= DIE_GRACE_S)


class _DyingConnection(_Connection):
    """A connection that SIGKILLs its process between a billing round's write and its
    commit, once ``_Victim.die_at`` has passed (test-only; the ledger is unchanged)."""

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's signature)
        record_class: Any = None,
    ) -> Any:
        rows = await super().fetch(query, *args, timeout=timeout, record_class=record_class)
        keys = args[0] if args else None
        if query == APPLY_ROUND and _Victim.now(keys):
            if _Victim.out is not None:
                _Victim.out.write(json.dumps({"event": "dying", "keys": keys}) + "\n")
                _Victim.out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return rows


async def run(
    dsn: str,
    *,
    minute_seconds: int,
    batch: int,
    seconds: float,
    ticks_out: IO[str] | None,
    die_after: float | None,
    die_min_keys: int = 1,
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + seconds
    if die_after is not None:
        _Victim.die_at = started + die_after
        _Victim.min_keys = die_min_keys
        _Victim.out = ticks_out
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, connection_class=_DyingConnection)
    ledger = PgLedger(pool, BillingSettings(minute_seconds=minute_seconds, batch_size=batch))
    ticks = stops = rounds = 0
    errors: list[str] = []
    try:
        while time.monotonic() < deadline:
            try:
                billed = await ledger.bill_due(batch)
            except Exception as exc:
                # BillingLoop logs and retries; here every failure is reported to the test.
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            rounds += 1
            ticks += len(billed.ticks)
            stops += len(billed.stopped)
            if ticks_out is not None and (billed.ticks or billed.stopped):
                record = {
                    "ticks": [[t.call_id, t.minute, t.charged] for t in billed.ticks],
                    "stops": [[s.call_id, s.minutes, s.coins] for s in billed.stopped],
                }
                ticks_out.write(json.dumps(record) + "\n")
                ticks_out.flush()
            if len(billed.ticks) + len(billed.stopped) < batch:
                await asyncio.sleep(IDLE_SLEEP_S)
            else:
                await asyncio.sleep(0)  # drain the backlog, but let the loop breathe
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)
    return {
        "ticks": ticks,
        "stops": stops,
        "rounds": rounds,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="billing_worker", description=__doc__)
    parser.add_argument("dsn")
    parser.add_argument("--minute-seconds", type=int, default=1)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ticks-out", help="append one JSON line per committed round")
    parser.add_argument("--die-after", type=float, help="SIGKILL itself mid-batch after this")
    parser.add_argument("--die-min-keys", type=int, default=1, help="in a batch this big")
    args = parser.parse_args(argv)
    out = open(args.ticks_out, "a", encoding="utf-8") if args.ticks_out else None  # noqa: SIM115
    try:
        summary = asyncio.run(
            run(
                args.dsn,
                minute_seconds=args.minute_seconds,
                batch=args.batch,
                seconds=args.seconds,
                ticks_out=out,
                die_after=args.die_after,
                die_min_keys=args.die_min_keys,
            )
        )
    finally:
        if out is not None:
            out.close()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
