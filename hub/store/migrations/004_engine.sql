-- Engine: who a delivery is for (the audience, or a session-wide cc/bcc copy) and how
-- many of its attempts were cut short by a worker that stopped (capped, then failed).
ALTER TABLE deliveries ADD COLUMN role text NOT NULL DEFAULT 'to';     -- to | cc | bcc
ALTER TABLE deliveries ADD COLUMN interruptions integer NOT NULL DEFAULT 0;
-- Session-level preparation (e.g. fetching attachments) that failed transiently: how many
-- times in a row; the session's due work is postponed with a growing delay, then failed.
ALTER TABLE sessions ADD COLUMN prepare_failures integer NOT NULL DEFAULT 0;
-- Webhook drains count the events in flight per URL and per app from their leases.
CREATE INDEX webhook_events_leased ON webhook_events (lease_until)
    WHERE status = 'pending' AND lease_until IS NOT NULL;
