-- bench/setup.sql — scratch copies of order-api's tables for make bench's
-- PostgreSQL limit (bench/order_tx.sql). Same columns, indexes, defaults and
-- constraints as the real ones; emptied at every run. Run as the owner role.
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.orders (LIKE orders.orders INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench.order_lines (LIKE orders.order_lines INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench.order_timeline (LIKE orders.order_timeline INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench.outbox (LIKE orders.outbox INCLUDING ALL);
TRUNCATE bench.orders, bench.order_lines, bench.order_timeline, bench.outbox;
