-- Double-entry ledger, calls, rates, gifts and withdrawals (DESIGN §5; the money model is
-- the docstring of billing/ledger.py). Applied by billing/migrate.py in one transaction.

-- Accounts: per user wallet / earnings / withdrawal_pending (is_user: never negative), the
-- platform's revenue, and external clearing accounts (ext:<provider>, ext:admin,
-- ext:payouts) that may go negative. balance always equals the sum of the account's
-- postings; check() verifies it. fillfactor leaves room on each page so balance updates
-- (balance is not indexed) stay HOT and do not touch the indexes.
CREATE TABLE accounts (
    id       bigserial PRIMARY KEY,
    owner    text    NOT NULL,
    kind     text    NOT NULL,
    balance  bigint  NOT NULL DEFAULT 0,
    is_user  boolean NOT NULL,
    CONSTRAINT accounts_owner_kind UNIQUE (owner, kind),
    CONSTRAINT accounts_user_not_negative CHECK (NOT is_user OR balance >= 0)
) WITH (fillfactor = 70);

INSERT INTO accounts (owner, kind, is_user) VALUES ('platform', 'revenue', false);

-- One row per money movement. key is the idempotency key (cm:<call>:<minute>,
-- gift:<sender>:<key>, rc:<provider>:<txn>, credit:<key>, wd:<id>:<step>); request_hash
-- tells a replay from a conflicting reuse; meta keeps the first result for replays.
CREATE TABLE journal (
    id           bigserial   PRIMARY KEY,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    kind         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    meta         jsonb,
    CONSTRAINT journal_key UNIQUE (key)
);

-- amount is signed: the account's balance moves by it. No foreign keys: they would cost a
-- lookup per row on the billing hot path (three postings per call-minute); the code
-- writes postings only for accounts and entries it has just read or created, and check()
-- reports any orphan.
CREATE TABLE postings (
    entry_id   bigint NOT NULL,
    account_id bigint NOT NULL,
    amount     bigint NOT NULL
);
CREATE INDEX postings_account_entry ON postings (account_id, entry_id);

-- The journal and its postings are append-only.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Every INSERT into postings must balance per entry. The code writes all postings of an
-- entry in one statement, so per-statement balance (checked set-based over the transition
-- table: one aggregate per statement, not one query per row) means every entry sums to
-- zero; rows can never be changed afterwards.
CREATE FUNCTION postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
BEGIN
    SELECT entry_id INTO bad FROM new_postings
        GROUP BY entry_id HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of journal entry % do not sum to zero', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balanced();

-- Calls carry their terms (rate, share, minute length) copied at open, the accounts they
-- move money between, and the prepaid schedule: minute n is due at
-- started_at + (n - 1) * minute_s; next_due = started_at + minutes * minute_s.
CREATE TABLE calls (
    call_id       text        PRIMARY KEY,
    payer         text        NOT NULL,
    host          text        NOT NULL,
    rate          bigint      NOT NULL CHECK (rate >= 0),
    share_bps     integer     NOT NULL CHECK (share_bps BETWEEN 0 AND 10000),
    minute_s      integer     NOT NULL CHECK (minute_s > 0),
    payer_wallet  bigint      NOT NULL REFERENCES accounts (id),
    host_earnings bigint      NOT NULL REFERENCES accounts (id),
    started_at    timestamptz NOT NULL,
    next_due      timestamptz NOT NULL,
    minutes       integer     NOT NULL CHECK (minutes >= 1),
    coins         bigint      NOT NULL CHECK (coins >= 0),
    state         text        NOT NULL CHECK (state IN ('active', 'ended')),
    ended_at      timestamptz,
    end_reason    text,
    CHECK ((state = 'active') = (ended_at IS NULL))
);
-- The billing loop's queue: only active calls, in due order.
CREATE INDEX calls_due ON calls (next_due, call_id) WHERE state = 'active';
CREATE INDEX calls_payer ON calls (payer, started_at, call_id);
CREATE INDEX calls_host ON calls (host, started_at, call_id);

CREATE TABLE host_rates (
    host       text        PRIMARY KEY,
    rate       bigint      NOT NULL CHECK (rate >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gifts (
    gift_id text    PRIMARY KEY,
    name    text    NOT NULL,
    price   bigint  NOT NULL CHECK (price > 0),
    active  boolean NOT NULL
);

-- A withdrawal's steps are journal entries wd:<id>:request|paid|rejected; state mirrors
-- them (check() compares). client_key is the host's idempotency key for the request.
CREATE TABLE withdrawals (
    id         bigserial   PRIMARY KEY,
    host       text        NOT NULL,
    client_key text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    state      text        NOT NULL CHECK (state IN ('pending', 'paid', 'rejected')),
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    decided_by text,
    CONSTRAINT withdrawals_host_key UNIQUE (host, client_key),
    CHECK ((state = 'pending') = (decided_at IS NULL))
);
CREATE INDEX withdrawals_state ON withdrawals (state, id);
