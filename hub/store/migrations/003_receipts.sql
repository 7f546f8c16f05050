-- Provider receipts (status callbacks) find their delivery by the provider's message id.
CREATE INDEX deliveries_provider_ref ON deliveries (provider_ref) WHERE provider_ref IS NOT NULL;
