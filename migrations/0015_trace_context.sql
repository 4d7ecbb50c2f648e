-- 0015 — W3C trace context with every order and every outbox row (issue #16,
-- item 1).
--
-- traceparent / tracestate are the context of the span that wrote the row
-- (docs/TRACING.md): the outbox relay makes its publish span a child of it
-- and sends the publish span's context in the message's AMQP headers. Both
-- NULL for rows written before this migration or by a writer without a
-- context: the relay starts a new trace for those. Nothing reads them to
-- decide anything; they are kept as text as the header carried them
-- (validated by the writer: trace.c).

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
                CHECK (schema_version BETWEEN 1 AND 999999),
            ADD COLUMN IF NOT EXISTS traceparent    text,
            ADD COLUMN IF NOT EXISTS tracestate     text$f$, svc);
END $$;
REVOKE ALL ON FUNCTION public.ordersuite_add_outbox_parking(text) FROM PUBLIC;

-- Every outbox there is now (ordersuite_add_messaging gives new ones the
-- columns through the function above).
SELECT public.ordersuite_add_outbox_parking(table_schema)
  FROM information_schema.tables
 WHERE table_name = 'outbox' AND table_type = 'BASE TABLE';

-- The order keeps the context of the request that placed it (its HTTP server
-- span), so that tools/trace finds an order's trace from its id.
ALTER TABLE orders.orders
    ADD COLUMN IF NOT EXISTS traceparent text,
    ADD COLUMN IF NOT EXISTS tracestate  text;
