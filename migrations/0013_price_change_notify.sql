-- 0013 — a price change wakes order-api's price cache (issue #15 item 3).
--
-- order-api keeps the catalog rows it has read (services/order-api/pricing.c)
-- so a POST /orders need not read them again. Every change to orders.products
-- (a price, a currency, a SKU added or removed, a TRUNCATE) notifies the
-- channel orders_products after its commit, and order-api, LISTENing there,
-- drops what it keeps. The trigger is per statement (one notification however
-- many rows change) and carries no payload: the cache is dropped whole, and
-- price changes are rare. A change made without it (triggers disabled) or a
-- notification lost is bounded by the cache's PRICE_CACHE_MAX_AGE_MS.

CREATE FUNCTION orders.products_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orders_products', '');
    RETURN NULL;
END $$;

CREATE TRIGGER products_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON orders.products
    FOR EACH STATEMENT EXECUTE FUNCTION orders.products_changed();
