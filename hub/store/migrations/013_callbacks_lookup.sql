-- Inbound callbacks look up the latest delivery to the caller's number across sessions.
CREATE INDEX deliveries_address ON deliveries (address);
