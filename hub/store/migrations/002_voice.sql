-- Voice: who holds a delivery's lease (a voice controller reconciles its own calls at
-- once after a restart) and the session's prepared audio.
ALTER TABLE deliveries ADD COLUMN claimed_by text;
ALTER TABLE sessions ADD COLUMN media jsonb;
CREATE INDEX deliveries_claimed_by ON deliveries (claimed_by) WHERE status = 'in_progress';
