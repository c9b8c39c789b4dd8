"""The ledger's audit on PostgreSQL (``PgLedger.check``): the checks of ``audit`` as SQL.

Its twin is ``audit_memory``, the same checks in Python over ``MemoryLedger``'s books;
keep the two in step, item for item and word for word.
"""

from __future__ import annotations

from billing.audit import report
from billing.ledger import Problem
from billing.pg_books import Conn
from billing.rules import PAYOUTS, PLATFORM

# Each query returns one text ``item`` per offending row, worded as audit_memory words it.

CALL_MINUTES = """
WITH cm AS (
    SELECT j.id, j.key, r.parts[1] AS call_id, r.parts[2]::integer AS minute
    FROM journal j
    CROSS JOIN LATERAL regexp_match(j.key, '^cm:(.*):([0-9]{1,9})$') AS r (parts)
    WHERE j.key LIKE 'cm:%'
)
"""

WITHDRAWAL_STEPS = """
WITH steps AS (
    SELECT j.key, r.parts[1]::bigint AS wid, r.parts[2] AS step
    FROM journal j
    CROSS JOIN LATERAL regexp_match(j.key, '^wd:([0-9]{1,18}):(request|paid|rejected)$')
        AS r (parts)
    WHERE j.key LIKE 'wd:%'
)
"""

# (check, query) for every one of audit.CHECKS, in its order.
QUERIES: tuple[tuple[str, str], ...] = (
    (
        "balance_mismatch",
        """
        SELECT format('account %s (%s/%s) balance %s, postings %s',
                      a.id, a.owner, a.kind, a.balance, coalesce(s.total, 0)) AS item
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) s
            ON s.account_id = a.id
        WHERE a.balance <> coalesce(s.total, 0)
        ORDER BY a.id
        """,
    ),
    (
        "orphan_posting",
        """
        SELECT format('posting of %s to account %s in entry %s',
                      p.amount, p.account_id, p.entry_id) AS item
        FROM postings p
        WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.id = p.entry_id)
           OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = p.account_id)
        ORDER BY p.entry_id, p.account_id
        """,
    ),
    (
        "unbalanced_entry",
        """
        SELECT format('entry %s %s sums to %s', p.entry_id, j.key, sum(p.amount)) AS item
        FROM postings p LEFT JOIN journal j ON j.id = p.entry_id
        GROUP BY p.entry_id, j.key
        HAVING sum(p.amount) <> 0
        ORDER BY p.entry_id
        """,
    ),
    (
        "negative_balance",
        """
        SELECT format('account %s (%s/%s) balance %s', id, owner, kind, balance) AS item
        FROM accounts WHERE is_user AND balance < 0 ORDER BY id
        """,
    ),
    (
        "minute_billed_twice",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        SELECT format('call %s minute %s: %s', call_id, minute,
                      string_agg(key, ', ' ORDER BY key)) AS item
        FROM cm WHERE call_id IS NOT NULL
        GROUP BY call_id, minute HAVING count(*) > 1
        ORDER BY call_id, minute
        """,
    ),
    (
        "call_minutes",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        , per_call AS (
            SELECT call_id, count(*) AS n, max(minute) AS last FROM cm GROUP BY call_id
        ), debits AS (
            SELECT cm.call_id, -sum(p.amount) AS coins
            FROM cm
            JOIN calls c ON c.call_id = cm.call_id
            JOIN postings p ON p.entry_id = cm.id AND p.account_id = c.payer_wallet
            GROUP BY cm.call_id
        )
        SELECT item FROM (
            SELECT c.call_id AS sort_key,
                   format('call %s has %s minutes / %s coins; journal: %s entries,'
                          ' last minute %s, %s coins', c.call_id, c.minutes, c.coins,
                          coalesce(pc.n, 0), coalesce(pc.last, 0), coalesce(d.coins, 0)) AS item
            FROM calls c
            LEFT JOIN per_call pc ON pc.call_id = c.call_id
            LEFT JOIN debits d ON d.call_id = c.call_id
            WHERE coalesce(pc.n, 0) <> c.minutes OR coalesce(pc.last, 0) <> c.minutes
               OR coalesce(d.coins, 0) <> c.coins OR c.coins <> c.minutes * c.rate
            UNION ALL
            SELECT cm.key, format('entry %s %s bills no known call', cm.id, cm.key)
            FROM cm LEFT JOIN calls c ON c.call_id = cm.call_id
            WHERE c.call_id IS NULL
        ) problems
        ORDER BY sort_key
        """,
    ),
    (
        "minute_out_of_time",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        SELECT format('%s (%s)', cm.key, CASE WHEN c.ended_at IS NULL
                      THEN 'charged before it fell due'
                      ELSE 'due at or after the call ended' END) AS item
        FROM cm JOIN calls c ON c.call_id = cm.call_id
        WHERE cm.minute >= 2
          AND c.started_at + (cm.minute - 1) * c.minute_s * interval '1 second'
              >= coalesce(c.ended_at, now())
        ORDER BY cm.call_id, cm.minute
        """,
    ),
    (
        "withdrawal_steps",
        WITHDRAWAL_STEPS  # noqa: S608 (constant SQL, no input)
        + """
        , per AS (
            SELECT w.id, w.state,
                   coalesce(string_agg(s.step, ',' ORDER BY s.step), '') AS got
            FROM withdrawals w LEFT JOIN steps s ON s.wid = w.id
            GROUP BY w.id, w.state
        )
        SELECT item FROM (
            SELECT id AS sort_id, format('withdrawal %s is %s, journal steps [%s]',
                                         id, state, got) AS item
            FROM per
            WHERE got <> CASE state WHEN 'pending' THEN 'request'
                                    WHEN 'paid' THEN 'paid,request'
                                    ELSE 'rejected,request' END
            UNION ALL
            SELECT coalesce(s.wid, 0), format('entry %s belongs to no withdrawal', s.key)
            FROM steps s LEFT JOIN withdrawals w ON w.id = s.wid
            WHERE w.id IS NULL
        ) problems
        ORDER BY sort_id
        """,
    ),
)

# The totals audit.report checks for conservation.
CONSERVATION = """
SELECT
    (SELECT coalesce(sum(balance), 0) FROM accounts
     WHERE is_user OR (owner = $1 AND kind = $2))::bigint AS held,
    (SELECT coalesce(-sum(p.amount), 0) FROM postings p
     JOIN journal j ON j.id = p.entry_id
     JOIN accounts a ON a.id = p.account_id
     WHERE j.kind IN ('recharge', 'credit') AND a.owner LIKE 'ext:%')::bigint AS paid_in,
    (SELECT coalesce(sum(p.amount), 0) FROM postings p
     JOIN journal j ON j.id = p.entry_id
     JOIN accounts a ON a.id = p.account_id
     WHERE j.kind = 'withdrawal_paid' AND a.owner = $3 AND a.kind = $4)::bigint AS paid_out
"""


async def audit(conn: Conn) -> list[Problem]:
    """Every check, on ``conn``: PgLedger.check runs it in one read-only snapshot."""
    found = {check: [row["item"] for row in await conn.fetch(sql)] for check, sql in QUERIES}
    row = await conn.fetchrow(CONSERVATION, *PLATFORM, *PAYOUTS)
    assert row is not None
    return report(found, held=row["held"], paid_in=row["paid_in"], paid_out=row["paid_out"])
