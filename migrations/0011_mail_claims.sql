-- 0011 — a mail's claim has an owner (issue #11, mail leftovers).
--
-- The mailer leases the pending rows it claims (next_attempt_at pushed out by
-- MAIL_LEASE_S). A lease alone let a second email process (or the same one,
-- after a slow server) claim a row again while its first claimant was still
-- sending it, and both wrote 'sent': the mail went out twice. Each claim now
-- writes its own token here; the mailer renews the lease, and writes any
-- outcome, only WHERE claim = its token, so a row claimed again by another
-- mailer is left to that one. NULL: never claimed.
ALTER TABLE email.messages ADD COLUMN claim uuid;
