-- Admin figures (billing/reports_pg.py) read the journal and postings of the last hour and
-- of today. Both tables are append-only with ids and created_at rising together, so BRIN
-- indexes (a few pages, next to nothing per insert on the billing hot path) find a window.
CREATE INDEX journal_created_brin ON journal USING brin (created_at);
CREATE INDEX postings_entry_brin ON postings USING brin (entry_id);
CREATE INDEX calls_started ON calls (started_at);

-- Banned users (signalling/admin/bans.py). The database's one migration sequence lives
-- here; a ban is stored where it survives every node restarting, unlike Redis.
CREATE TABLE bans (
    user_id   text        PRIMARY KEY,
    banned_by text        NOT NULL,
    reason    text        NOT NULL,
    banned_at timestamptz NOT NULL DEFAULT now()
);
