-- 0006 — the mails of one order or sale: "what did we send about order X"
-- (support, the ledger checker, loadgen's end-to-end timings) without
-- reading every mail.
CREATE INDEX messages_correlation ON email.messages (correlation_id);
