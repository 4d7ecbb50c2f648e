-- 0002 — the transactional outbox and the inbox, in every service schema.
--
-- outbox: events written in the same transaction as the change that caused
-- them; the relay publishes pending rows in id order with publisher confirms
-- and deletes them once the broker has acked them. pg_notify wakes the relay.
-- inbox: the message_id of every message a consumer has processed, written in
-- the same transaction as the handler's effect; a redelivery finds its id and
-- has no second effect.

CREATE FUNCTION public.ordersuite_add_messaging(svc text) RETURNS void
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

SELECT public.ordersuite_add_messaging(s) FROM unnest(ARRAY['orders', 'inventory', 'billing', 'email']) AS s;
