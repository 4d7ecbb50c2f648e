-- 0008 — parked outbox rows (issue #11, item 2).
--
-- A row the broker keeps refusing (returned as unroutable, or nacked) while
-- the connection is fine is not retried for ever at the head of the queue:
-- after OUTBOX_PARK_AFTER attempts the relay parks it. A parked row is kept
-- with the broker's last reply, skipped by the relay, counted in /metrics
-- (ordersuite_outbox_parked_rows), listed by `dlq outbox list <service>` and
-- put back by `dlq outbox replay <service>`.

CREATE OR REPLACE FUNCTION public.ordersuite_add_outbox_parking(svc text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($f$
        ALTER TABLE %I.outbox
            ADD COLUMN IF NOT EXISTS attempts   integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS parked_at  timestamptz,
            ADD COLUMN IF NOT EXISTS last_error text$f$, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_outbox_parking(text) FROM PUBLIC;

-- New services (and the tests' schemas) get the columns with their outbox.
CREATE OR REPLACE FUNCTION public.ordersuite_add_messaging(svc text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.outbox (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_id     uuid        NOT NULL UNIQUE,
            routing_key    text        NOT NULL,
            correlation_id uuid        NOT NULL,
            causation_id   uuid,
            body           text        NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now()
        )$f$, svc);
    PERFORM public.ordersuite_add_outbox_parking(svc);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.inbox (
            message_id   uuid        PRIMARY KEY,
            routing_key  text        NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now()
        )$f$, svc);
    EXECUTE format('CREATE INDEX IF NOT EXISTS inbox_processed_at ON %I.inbox (processed_at)', svc);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.outbox, %I.inbox TO %I', svc, svc, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_messaging(text) FROM PUBLIC;

-- Every outbox there is now (the services', and bench's copy if it exists).
SELECT public.ordersuite_add_outbox_parking(table_schema)
  FROM information_schema.tables
 WHERE table_name = 'outbox' AND table_type = 'BASE TABLE';
