-- bench/order_tx.sql — pgbench script: the transaction order-api commits for
-- one POST /orders (order, two lines, first timeline entry, outbox row with an
-- order.placed-sized body), with synchronous commit, on the scratch tables of
-- bench/setup.sql. Run with -M prepared (one round trip per statement, as
-- order-api does).
BEGIN;
INSERT INTO bench.orders (id, client_id, customer_id, customer_email, currency, total_minor, idempotency_key, request_hash)
    VALUES (gen_random_uuid(), 'bench', 'bench', 'bench@example.com', 'EUR', 1150,
            'pgb-' || :client_id || '-' || (random() * 1e15)::bigint,
            encode(sha256(convert_to(repeat('x', 200), 'UTF8')), 'hex'))
    RETURNING id \gset
INSERT INTO bench.order_lines (order_id, sku, quantity, unit_price_minor)
    SELECT :id::uuid, unnest('{FLT-PAPER,MUG-WHITE}'::text[]), unnest('{1,1}'::bigint[]), unnest('{350,800}'::bigint[]);
INSERT INTO bench.order_timeline (order_id, status) VALUES (:id::uuid, 'PENDING');
INSERT INTO bench.outbox (message_id, routing_key, correlation_id, causation_id, body)
    VALUES (gen_random_uuid(), 'order.placed', :id::uuid, NULL, repeat('x', 600));
COMMIT;
