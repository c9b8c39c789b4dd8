"""The SQL of the PostgreSQL ledger (``ledger_pg.PgLedger``), grouped by the concern of
the ``Ledger`` protocol that runs it. The schema is billing/migrations/*.sql; the audit's
queries are in ``audit_pg``.
"""

# --- idempotency keys and accounts --------------------------------------------------------

FIRST_USE = "SELECT request_hash, meta::text AS meta FROM journal WHERE key = $1"

# Claim the key, and only if this statement claimed it, post the entry (all its postings
# in ONE statement: the postings_balanced trigger checks each statement) and move each
# touched balance once. A key someone else holds moves nothing.
CLAIM_AND_MOVE = """
WITH claimed AS (
    INSERT INTO journal (key, request_hash, kind, meta) VALUES ($1, $2, $3, $4::jsonb)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
), posted AS (
    INSERT INTO postings (entry_id, account_id, amount)
    SELECT c.id, m.account_id, m.amount
    FROM claimed c, unnest($5::bigint[], $6::bigint[]) AS m (account_id, amount)
    RETURNING account_id, amount
), moved AS (
    UPDATE accounts a SET balance = a.balance + d.amount
    FROM (SELECT account_id, sum(amount)::bigint AS amount FROM posted GROUP BY account_id) d
    WHERE a.id = d.account_id
)
SELECT id FROM claimed
"""

ENTRY_ID = "SELECT id FROM journal WHERE key = $1"

# Locks rows in (kind rank, id) order: LockRows runs above the Sort.
LOCK_USER_ACCOUNTS = """
SELECT a.id, a.owner, a.kind, a.balance
FROM accounts a
JOIN unnest($1::text[], $2::text[]) AS w (owner, kind) ON a.owner = w.owner AND a.kind = w.kind
ORDER BY array_position($3::text[], a.kind), a.id
FOR UPDATE OF a
"""

CREATE_ACCOUNTS = """
INSERT INTO accounts (owner, kind, is_user)
SELECT owner, kind, $3 FROM unnest($1::text[], $2::text[]) AS w (owner, kind)
ON CONFLICT (owner, kind) DO NOTHING
"""

FIND_ACCOUNT = "SELECT id FROM accounts WHERE owner = $1 AND kind = $2"

# --- call billing -------------------------------------------------------------------------

OPEN_CALL = """
INSERT INTO calls (call_id, payer, host, rate, share_bps, minute_s, payer_wallet,
                   host_earnings, started_at, next_due, minutes, coins, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now() + $6::integer * interval '1 second',
        1, $4, 'active')
"""

# A due minute is charged only once the call's node has shown life since it began
# (seen_at > next_due): a minute that starts after a node's last sign of life is never
# charged. Such a call waits, uncharged, until its node touches it again or it is orphaned.
DUE_CALLS = """
SELECT call_id, payer, host, rate, share_bps, minutes, coins, payer_wallet, host_earnings,
       $2::integer > 0 AND seen_at < now() - $2::integer * interval '1 second' AS orphaned
FROM calls
WHERE state = 'active' AND next_due < now()
  AND (seen_at > next_due
       OR ($2::integer > 0 AND seen_at < now() - $2::integer * interval '1 second'))
ORDER BY next_due, call_id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

LOCK_BATCH_ACCOUNTS = """
SELECT id, balance FROM accounts
WHERE id = ANY($1::bigint[])
ORDER BY array_position($2::text[], kind), id
FOR UPDATE
"""

# One statement writes a whole billing round: claim the keys, post the claimed minutes,
# move every touched balance once (so the platform revenue row is updated once per
# batch, whatever the batch size), advance the paid calls and end the unpayable ones.
APPLY_ROUND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                         $5::bigint[], $6::bigint[])
        AS b (key, request_hash, wallet, earnings, rate, host_part)
), claimed AS (
    INSERT INTO journal (key, request_hash, kind)
    SELECT key, request_hash, 'call_minute' FROM batch
    ON CONFLICT (key) DO NOTHING
    RETURNING id, key
), moves AS (
    SELECT c.id AS entry_id, m.account_id, m.amount
    FROM claimed c
    JOIN batch b ON b.key = c.key
    CROSS JOIN LATERAL (VALUES (b.wallet, -b.rate),
                               (b.earnings, b.host_part),
                               ($7::bigint, b.rate - b.host_part)) AS m (account_id, amount)
    WHERE m.amount <> 0
), posted AS (
    INSERT INTO postings (entry_id, account_id, amount)
    SELECT entry_id, account_id, amount FROM moves
), moved AS (
    UPDATE accounts a SET balance = a.balance + d.amount
    FROM (SELECT account_id, sum(amount)::bigint AS amount FROM moves GROUP BY account_id) d
    WHERE a.id = d.account_id
), advanced AS (
    UPDATE calls c
    SET minutes = c.minutes + 1,
        coins = c.coins + c.rate,
        next_due = c.next_due + c.minute_s * interval '1 second'
    WHERE c.call_id = ANY($8::text[])
), ended AS (
    -- An orphaned call (peer_lost) ends at its node's last sign of life; an unpaid one now.
    UPDATE calls c
    SET state = 'ended', end_reason = e.reason,
        ended_at = CASE WHEN e.reason = 'peer_lost' THEN c.seen_at ELSE now() END
    FROM unnest($9::text[], $10::text[]) AS e (call_id, reason)
    WHERE c.call_id = e.call_id
)
SELECT key FROM claimed
"""

TOUCH_CALLS = (
    "UPDATE calls SET seen_at = now() WHERE call_id = ANY($1::text[]) AND state = 'active'"
)

ENDED_CALLS = (
    "SELECT call_id, end_reason FROM calls WHERE call_id = ANY($1::text[]) AND state = 'ended'"
)

LOCK_CALL = "SELECT state, minutes, coins FROM calls WHERE call_id = $1 FOR UPDATE"

# clock_timestamp(), not now(): now() is when the transaction began, which can precede the
# commit of a billing round close_call waited for (LOCK_CALL), and that round's minute
# would then look charged after the end.
END_CALL = """
UPDATE calls SET state = 'ended', ended_at = clock_timestamp(), end_reason = $2
WHERE call_id = $1
"""

# Two index-ordered scans (as payer, as host; never both: a call's payer and host differ),
# each cut at the limit before merging, so a busy host's history is not sorted whole.
USER_CALLS = """
SELECT * FROM (
    (SELECT call_id, payer, host, rate, share_bps, started_at, ended_at, state, end_reason,
            minutes, coins
     FROM calls
     WHERE payer = $1 AND ($3::float8 IS NULL OR started_at < to_timestamp($3::float8))
     ORDER BY started_at DESC, call_id DESC
     LIMIT $2)
    UNION ALL
    (SELECT call_id, payer, host, rate, share_bps, started_at, ended_at, state, end_reason,
            minutes, coins
     FROM calls
     WHERE host = $1 AND ($3::float8 IS NULL OR started_at < to_timestamp($3::float8))
     ORDER BY started_at DESC, call_id DESC
     LIMIT $2)
) mine
ORDER BY started_at DESC, call_id DESC
LIMIT $2
"""

# --- wallets ------------------------------------------------------------------------------

USER_BALANCES = "SELECT kind, balance FROM accounts WHERE owner = $1 AND kind = ANY($2::text[])"

USER_ENTRIES = """
WITH mine AS (
    SELECT id, kind FROM accounts WHERE owner = $1 AND kind = ANY($2::text[])
), recent AS (
    SELECT DISTINCT r.entry_id
    FROM mine m
    CROSS JOIN LATERAL (
        SELECT p.entry_id FROM postings p
        WHERE p.account_id = m.id AND p.entry_id < $3
        ORDER BY p.entry_id DESC LIMIT $4
    ) r
    ORDER BY r.entry_id DESC LIMIT $4
)
SELECT j.id, j.key, j.kind, j.created_at, d.wallet, d.earnings, d.pending
FROM recent r
JOIN journal j ON j.id = r.entry_id
CROSS JOIN LATERAL (
    -- per (account, entry): an index lookup each, however long the user's history
    SELECT coalesce(sum(p.amount) FILTER (WHERE m.kind = 'wallet'), 0)::bigint AS wallet,
           coalesce(sum(p.amount) FILTER (WHERE m.kind = 'earnings'), 0)::bigint AS earnings,
           coalesce(sum(p.amount) FILTER (WHERE m.kind = 'withdrawal_pending'), 0)::bigint
               AS pending
    FROM mine m
    JOIN postings p ON p.account_id = m.id AND p.entry_id = r.entry_id
) d
ORDER BY j.id DESC
"""

# --- catalog ------------------------------------------------------------------------------

HOST_RATE = "SELECT rate FROM host_rates WHERE host = $1"

SET_HOST_RATE = """
INSERT INTO host_rates (host, rate) VALUES ($1, $2)
ON CONFLICT (host) DO UPDATE SET rate = excluded.rate, updated_at = now()
"""

PUT_GIFT = """
INSERT INTO gifts (gift_id, name, price, active) VALUES ($1, $2, $3, $4)
ON CONFLICT (gift_id) DO UPDATE
SET name = excluded.name, price = excluded.price, active = excluded.active
"""

LIST_GIFTS = """
SELECT gift_id, name, price, active FROM gifts
WHERE active OR NOT $1 ORDER BY price, gift_id
"""

GIFT_PRICE = "SELECT price, active FROM gifts WHERE gift_id = $1"

# --- payouts ------------------------------------------------------------------------------

WITHDRAWAL_BY_KEY = """
SELECT id, host, amount, state, created_at, decided_at
FROM withdrawals WHERE host = $1 AND client_key = $2
"""

# The withdrawal row is the claim of the host's key (UNIQUE (host, client_key)).
NEW_WITHDRAWAL = """
INSERT INTO withdrawals (host, client_key, amount, state) VALUES ($1, $2, $3, 'pending')
ON CONFLICT (host, client_key) DO NOTHING
RETURNING id, host, amount, state, created_at, decided_at
"""

LOCK_WITHDRAWAL = "SELECT host, amount, state FROM withdrawals WHERE id = $1 FOR UPDATE"

DECIDE_WITHDRAWAL = """
UPDATE withdrawals SET state = $2, decided_at = now(), decided_by = $3
WHERE id = $1
RETURNING id, host, amount, state, created_at, decided_at
"""

LIST_WITHDRAWALS = """
SELECT id, host, amount, state, created_at, decided_at
FROM withdrawals
WHERE ($1::text IS NULL OR host = $1) AND ($2::text IS NULL OR state = $2)
ORDER BY id DESC
LIMIT $3
"""
