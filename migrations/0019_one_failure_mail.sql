-- 0019 — one mail per order about how it failed (review of #17).
--
-- An order fails once, whichever way the customer hears of it first: a
-- rejection for stock, a failed payment, or its deadline (the saga's
-- timeout). Email looked for an earlier failure mail of the order before it
-- recorded one, which two email processes (or consumers) handling two such
-- events of one order at the same moment both passed: two mails. The unique
-- index below makes the second insert a conflict, which email's INSERT ...
-- ON CONFLICT DO NOTHING turns into no mail (services/email/mails.c). A
-- confirmation is not in it: it comes only from order-api's CONFIRMED
-- (order.confirmed), which excludes the others.
--
-- This was 0018, a plain CREATE UNIQUE INDEX, which stopped on a database
-- that already held two failure mails of one order (a unique index cannot
-- be built over duplicates). It is 0019 now, and de-duplicates first, so it
-- never stops there: a database where 0018 ran has the index already (IF NOT
-- EXISTS) and no duplicates (the index kept them out); one where 0018
-- stopped, or never ran, gets both here. 0018 stays unused: a changed file
-- under an applied name would make migrate refuse (forward-only).
--
-- De-duplicating keeps the record: of an order's failure mails the first
-- (created_at, then id) stays as it is; each later one (a mail that went
-- out, or would have) keeps its row with its kind marked '<kind>_duplicate',
-- outside the index and outside the ledger's count of failure mails, so an
-- operator can still see what the customer was sent. A pending one is not
-- sent any more: the mailer sends by status, so it is marked 'refused' with
-- the reason in last_error.
UPDATE email.messages m
   SET kind = m.kind || '_duplicate',
       status = CASE WHEN m.status = 'pending' THEN 'refused' ELSE m.status END,
       last_error = CASE WHEN m.status = 'pending'
                         THEN 'migration 0019: a later failure mail of an order that has one'
                         ELSE m.last_error END
  FROM (SELECT id, row_number() OVER (PARTITION BY correlation_id ORDER BY created_at, id) AS n
          FROM email.messages
         WHERE correlation_id IS NOT NULL
           AND kind IN ('order_rejected', 'payment_failed', 'order_expired')) d
 WHERE m.id = d.id AND d.n > 1;

CREATE UNIQUE INDEX IF NOT EXISTS messages_one_failure_per_order ON email.messages (correlation_id)
    WHERE kind IN ('order_rejected', 'payment_failed', 'order_expired');
