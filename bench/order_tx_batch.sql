-- bench/order_tx_batch.sql — pgbench script: :batch orders (pgbench -D
-- batch=N) committed in one transaction, each as bench/order_tx.sql writes
-- one (order, two lines, first timeline entry, outbox row with an
-- order.placed-sized body), in multi-row statements, on the scratch tables of
-- bench/setup.sql: what group commit can make of the database's commits.
-- tps × batch is the orders/s; synchronous commit as everywhere.
WITH o AS (
    INSERT INTO bench.orders (id, client_id, customer_id, customer_email, currency, total_minor, idempotency_key, request_hash)
    SELECT gen_random_uuid(), 'bench', 'bench', 'bench@example.com', 'EUR', 1150,
           'pgb-' || :client_id || '-' || g || '-' || (random() * 1e15)::bigint,
           encode(sha256(convert_to(repeat('x', 200), 'UTF8')), 'hex')
      FROM generate_series(1, :batch) g
    RETURNING id
), l AS (
    INSERT INTO bench.order_lines (order_id, sku, quantity, unit_price_minor)
    SELECT o.id, x.sku, x.q, x.p
      FROM o, (VALUES ('FLT-PAPER', 1::bigint, 350::bigint), ('MUG-WHITE', 1, 800)) AS x (sku, q, p)
), t AS (
    INSERT INTO bench.order_timeline (order_id, status) SELECT id, 'PENDING' FROM o
)
INSERT INTO bench.outbox (message_id, routing_key, correlation_id, causation_id, body)
SELECT gen_random_uuid(), 'order.placed', id, NULL, repeat('x', 600) FROM o;
