-- 0007 — email.messages becomes the mail outbox (issue #11, item 1).
--
-- The email worker used to talk SMTP inside its handler's transaction, so a
-- batch that fell back re-sent its neighbours' mail, and every SMTP error was
-- retried. Now the handler only records the mail (status 'pending') in its
-- transaction; the mailer thread delivers pending rows after COMMIT and
-- marks each one 'sent'. A transient failure (server down, 4xx) moves
-- next_attempt_at forward; a permanent refusal (5xx) sets 'refused', keeps
-- the server's reply in last_error and sends the cause message to email.dlq
-- (cause_* is that message, re-encoded, so a DLQ replay records it again).
-- 'recorded' stays for a worker without SMTP_URL.
ALTER TABLE email.messages DROP CONSTRAINT messages_status_check;
ALTER TABLE email.messages
    ADD CONSTRAINT messages_status_check
        CHECK (status IN ('recorded', 'pending', 'sent', 'refused')),
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error      text,
    ADD COLUMN sent_at         timestamptz,
    ADD COLUMN cause_key       text,   -- routing key of the cause message
    ADD COLUMN cause_body      text,   -- its JSON body
    ADD COLUMN cause_app       text,   -- its app_id
    ADD COLUMN cause_ts        bigint; -- its timestamp (seconds)

-- What the mailer claims: pending rows that are due.
CREATE INDEX messages_pending ON email.messages (next_attempt_at, id) WHERE status = 'pending';
