-- Provider receipts that arrived before their delivery recorded the provider's message id
-- (Twilio can call back before the worker has written the SID). Kept per transport, the
-- one whose signature was checked, and applied once the message id is recorded; the last
-- word per message wins. Unmatched ones (and those of deleted transports) are purged
-- after two days.
CREATE TABLE early_receipts (
    transport_id uuid NOT NULL,     -- no foreign key: a receipt batch never fails on it
    provider_ref text NOT NULL,
    result jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transport_id, provider_ref)
);
CREATE INDEX early_receipts_received ON early_receipts (received_at);
