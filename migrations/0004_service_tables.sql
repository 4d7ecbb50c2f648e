-- 0004 — the tables of the four services, each in its own schema.

-- ---------------------------------------------------------------- orders
CREATE TABLE orders.orders (
    id              uuid PRIMARY KEY,
    customer_id     text   NOT NULL,
    customer_email  text   NOT NULL,
    currency        text   NOT NULL,
    total_minor     bigint NOT NULL CHECK (total_minor >= 0),
    status          text   NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'RESERVED', 'CONFIRMED', 'REJECTED',
                                      'PAYMENT_FAILED', 'CANCELLED')),
    reason          text,
    invoice_id      uuid,
    invoice_number  bigint,
    idempotency_key text UNIQUE,
    request_hash    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_status_id ON orders.orders (status, id);
CREATE INDEX orders_created ON orders.orders (created_at, id);

CREATE TABLE orders.order_lines (
    order_id         uuid   NOT NULL REFERENCES orders.orders (id),
    sku              text   NOT NULL,
    quantity         bigint NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, sku)
);

-- The timeline of status changes, one row per change.
CREATE TABLE orders.order_timeline (
    order_id   uuid NOT NULL REFERENCES orders.orders (id),
    status     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    message_id uuid,
    PRIMARY KEY (order_id, status)
);

-- ------------------------------------------------------------- inventory
CREATE TABLE inventory.reservations (
    order_id    uuid PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE TABLE inventory.reservation_lines (
    order_id uuid   NOT NULL REFERENCES inventory.reservations (order_id),
    sku      text   NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
-- Orders that could not be reserved (so a replay knows the outcome too).
CREATE TABLE inventory.rejections (
    order_id uuid PRIMARY KEY,
    reason   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
-- Stock taken by POS sales: requested, and applied (never below zero).
CREATE TABLE inventory.sale_lines (
    sale_id  uuid   NOT NULL,
    sku      text   NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    applied  bigint NOT NULL CHECK (applied >= 0),
    PRIMARY KEY (sale_id, sku)
);

-- --------------------------------------------------------------- billing
CREATE SEQUENCE billing.invoice_number START 1001;
CREATE TABLE billing.invoices (
    id             uuid PRIMARY KEY,
    number         bigint NOT NULL UNIQUE DEFAULT nextval('billing.invoice_number'),
    order_id       uuid UNIQUE,
    sale_id        uuid UNIQUE,
    customer_id    text,
    customer_email text,
    currency       text   NOT NULL,
    net_minor      bigint NOT NULL,
    tax_minor      bigint NOT NULL,
    amount_minor   bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((order_id IS NULL) <> (sale_id IS NULL))
);
CREATE TABLE billing.invoice_lines (
    invoice_id       uuid   NOT NULL REFERENCES billing.invoices (id),
    sku              text   NOT NULL,
    quantity         bigint NOT NULL,
    unit_price_minor bigint NOT NULL,
    PRIMARY KEY (invoice_id, sku)
);
CREATE TABLE billing.payment_failures (
    order_id     uuid PRIMARY KEY,
    amount_minor bigint NOT NULL,
    reason       text   NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);

-- ----------------------------------------------------------------- email
CREATE TABLE email.messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cause_id    uuid NOT NULL,          -- message_id of the event that caused the mail
    kind        text NOT NULL,          -- order_confirmed, order_rejected, payment_failed, receipt, low_stock
    correlation_id uuid,
    recipient   text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('recorded', 'sent')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cause_id, kind)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orders TO orders;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA inventory TO inventory;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA billing TO billing;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA billing TO billing;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA email TO email;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA email TO email;
