-- 0018 — one mail per order about how it failed (review of #17).
--
-- An order fails once, whichever way the customer hears of it first: a
-- rejection for stock, a failed payment, or its deadline (the saga's
-- timeout). Email looked for an earlier failure mail of the order before it
-- recorded one, which two email processes (or consumers) handling two such
-- events of one order at the same moment both passed: two mails. This index
-- makes the second insert a conflict, which email's INSERT ... ON CONFLICT DO
-- NOTHING turns into no mail (services/email/mails.c). A confirmation is not
-- in it: it comes only from order-api's CONFIRMED (order.confirmed), which
-- excludes the others.
--
-- On a database that already holds two failure mails of one order this
-- fails (a unique index cannot be built over duplicates): the migration
-- stops, and an operator decides which row stays.
CREATE UNIQUE INDEX messages_one_failure_per_order ON email.messages (correlation_id)
    WHERE kind IN ('order_rejected', 'payment_failed', 'order_expired');
