-- 0005 — every change of stock that is not a reservation, a release or a
-- sale is written down, so stock can be checked against its history:
--
--   on_hand = sum(adjustments.delta)
--           - sum(reservation_lines of reservations still RESERVED)
--           - sum(sale_lines.applied)
--
-- (tools/ledger checks exactly this.) The opening balance of each SKU is the
-- first adjustment, computed so the equation holds when this migration runs.
-- Restocking and corrections go through inventory.adjust_stock(); inventory's
-- own role never changes stock any other way than through its events.

CREATE TABLE inventory.adjustments (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku    text   NOT NULL REFERENCES inventory.stock (sku),
    delta  bigint NOT NULL,
    reason text   NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX adjustments_sku ON inventory.adjustments (sku);

INSERT INTO inventory.adjustments (sku, delta, reason)
SELECT s.sku,
       s.on_hand
       + coalesce((SELECT sum(l.quantity) FROM inventory.reservation_lines l
                   JOIN inventory.reservations r USING (order_id)
                   WHERE l.sku = s.sku AND r.status = 'RESERVED'), 0)
       + coalesce((SELECT sum(applied) FROM inventory.sale_lines x WHERE x.sku = s.sku), 0),
       'opening balance (migration 0005)'
FROM inventory.stock s;

-- Adds delta (negative to take away) to a SKU's stock and writes it down, in
-- the caller's transaction. Refuses to go below zero (the CHECK on on_hand).
-- Returns the new on_hand.
CREATE FUNCTION inventory.adjust_stock(p_sku text, p_delta bigint, p_reason text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE inventory.stock SET on_hand = on_hand + p_delta, updated_at = now()
     WHERE sku = p_sku RETURNING on_hand INTO n;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown SKU %', p_sku USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO inventory.adjustments (sku, delta, reason) VALUES (p_sku, p_delta, p_reason);
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION inventory.adjust_stock(text, bigint, text) FROM PUBLIC;

GRANT SELECT ON inventory.adjustments TO inventory;
