-- 0016 — the saga's timeout (issue #17, item 2).
--
-- order-api closes an order that reaches no final status within
-- ORDER_TIMEOUT_S of its creation: it becomes EXPIRED and order.expired goes
-- out (services/order-api/saga.c). Its due time is created_at plus the
-- timeout; the index below is what the outbox relay's sweep reads, and
-- holds only the orders that can still expire.
ALTER TABLE orders.orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders.orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'RESERVED', 'CONFIRMED', 'REJECTED',
                      'PAYMENT_FAILED', 'CANCELLED', 'EXPIRED'));
CREATE INDEX orders_open_created ON orders.orders (created_at)
    WHERE status IN ('PENDING', 'RESERVED');

-- billing: an expired order's invoice is void, and one that comes later
-- (inventory.reserved after order.expired) is never made: a row here says
-- so, with the invoice it voided (NULL: there was none when the order
-- expired, and none will be made).
CREATE TABLE billing.voids (
    order_id   uuid PRIMARY KEY,
    invoice_id uuid REFERENCES billing.invoices (id),
    reason     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON billing.voids TO billing;

-- inventory needs no table: an order that expired before it was reserved
-- gets a reservation row already RELEASED, with no lines, which is what makes
-- a late order.placed find it decided; a held reservation is released as for
-- a failed payment.
