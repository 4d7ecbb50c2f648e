-- 0012 — when the broker first returned an outbox row (issue #11, item 2).
--
-- A row is parked only after OUTBOX_PARK_AFTER returns (basic.return: no
-- queue is bound for its key) AND OUTBOX_PARK_MIN_AGE_S since the first of
-- them, so a short routing gap (a queue declared again) parks nothing however
-- often the relay meets the row. refused_since is that first return; `dlq
-- outbox replay` clears it with attempts and parked_at. A nack (the broker
-- refusing for now) sets neither.

CREATE OR REPLACE FUNCTION public.ordersuite_add_outbox_parking(svc text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($f$
        ALTER TABLE %I.outbox
            ADD COLUMN IF NOT EXISTS attempts      integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS parked_at     timestamptz,
            ADD COLUMN IF NOT EXISTS last_error    text,
            ADD COLUMN IF NOT EXISTS refused_since timestamptz$f$, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_outbox_parking(text) FROM PUBLIC;

-- Every outbox there is now (ordersuite_add_messaging gives new ones the
-- column through the function above).
SELECT public.ordersuite_add_outbox_parking(table_schema)
  FROM information_schema.tables
 WHERE table_name = 'outbox' AND table_type = 'BASE TABLE';
