-- 0017 — live order status (issue #16 item 4): GET /orders/{id}/events.
--
-- Each timeline entry gets seq, a number that only grows: it is the
-- Server-Sent Events id of the entry, so a client that comes back with
-- Last-Event-ID gets the entries after it and none twice. For one order the
-- entries' seq grow in commit order: a status change takes the order's row
-- lock (UPDATE orders) before it writes its entry, so the next change of that
-- order draws its seq after the earlier one committed. Existing entries are
-- numbered first, in the order of their time, and new ones after them.
--
-- A trigger NOTIFYs order_events with the order id for every entry but the
-- first (PENDING is written with the order itself, before any stream can ask
-- for it), so whichever order-api instance consumed the event that moved an
-- order, every instance holding a stream on it hears of the change at the
-- commit. A trigger, not a NOTIFY in order-api's code, so every way a status
-- is written (one row or a set) is covered.
ALTER TABLE orders.order_timeline ADD COLUMN seq bigint;
UPDATE orders.order_timeline t SET seq = n.n
    FROM (SELECT order_id, status, row_number() OVER (ORDER BY at, order_id, status) AS n
          FROM orders.order_timeline) n
    WHERE t.order_id = n.order_id AND t.status = n.status;
ALTER TABLE orders.order_timeline ALTER COLUMN seq SET NOT NULL;
DO $$
BEGIN
    EXECUTE format('ALTER TABLE orders.order_timeline ALTER COLUMN seq'
                   ' ADD GENERATED ALWAYS AS IDENTITY (START WITH %s)',
                   (SELECT coalesce(max(seq), 0) + 1 FROM orders.order_timeline));
END $$;
ALTER TABLE orders.order_timeline ADD CONSTRAINT order_timeline_seq_key UNIQUE (seq);

CREATE FUNCTION orders.order_timeline_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', NEW.order_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER order_timeline_notify AFTER INSERT ON orders.order_timeline
    FOR EACH ROW WHEN (NEW.status <> 'PENDING') EXECUTE FUNCTION orders.order_timeline_notify();
