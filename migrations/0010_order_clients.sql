-- 0010 — orders belong to an API client (issue #12 item 5).
--
-- order-api authenticates each request by its bearer token; the token's client
-- id is stored with the order. A client reads and lists only its own orders,
-- and an Idempotency-Key is one client's: the same key from two clients makes
-- two orders. Orders placed before this migration belong to the client ''
-- (no token maps to it), so no client sees them through the API.
ALTER TABLE orders.orders ADD COLUMN client_id text NOT NULL DEFAULT '';
ALTER TABLE orders.orders ALTER COLUMN client_id DROP DEFAULT;

ALTER TABLE orders.orders DROP CONSTRAINT orders_idempotency_key_key;
ALTER TABLE orders.orders ADD CONSTRAINT orders_client_idempotency_key
    UNIQUE (client_id, idempotency_key);

-- GET /orders pages through one client's orders by (created_at, id).
CREATE INDEX orders_client_created ON orders.orders (client_id, created_at, id);
