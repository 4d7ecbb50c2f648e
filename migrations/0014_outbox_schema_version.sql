-- 0014 — the schema version of each outbox row (issue #17, item 3).
--
-- A writer chooses the version of an event's schema it writes
-- (ORDER_PLACED_VERSION in order-api, during a rollout); the relay publishes
-- the row with that version in the header schema_version. Rows written
-- before this migration are version 1, the only one there was.

CREATE OR REPLACE FUNCTION public.ordersuite_add_outbox_parking(svc text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($f$
        ALTER TABLE %I.outbox
            ADD COLUMN IF NOT EXISTS attempts       integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS parked_at      timestamptz,
            ADD COLUMN IF NOT EXISTS last_error     text,
            ADD COLUMN IF NOT EXISTS refused_since  timestamptz,
            ADD COLUMN IF NOT EXISTS schema_version integer NOT NULL DEFAULT 1
                CHECK (schema_version BETWEEN 1 AND 999999)$f$, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_outbox_parking(text) FROM PUBLIC;

-- Every outbox there is now (ordersuite_add_messaging gives new ones the
-- column through the function above).
SELECT public.ordersuite_add_outbox_parking(table_schema)
  FROM information_schema.tables
 WHERE table_name = 'outbox' AND table_type = 'BASE TABLE';
