-- Calls are kept alive by the node that runs them (Ledger.touch_calls). A call nobody has
-- touched for BillingSettings.orphan_after_s lost its node (a crash): the billing loop ends
-- it with reason peer_lost instead of charging its payer for a call that no longer exists.
ALTER TABLE calls ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now();
