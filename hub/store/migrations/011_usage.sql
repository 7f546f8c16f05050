-- Usage per app and day, session report latencies (DESIGN §3 /v1/usage, §6).
-- deliveries.final_at: when the delivery reached its current final status (delivered,
-- failed, cancelled); NULL while it has work left. Kept by a trigger so that every path
-- that settles a delivery (recording, receipts, cancel, fail_all, reconciler) sets it;
-- a failed delivery sent again (trigger ?includeFailed) loses it until it ends again.
-- It is the transaction's now(), so it never lies after the session's ended_at.
ALTER TABLE deliveries ADD COLUMN final_at timestamptz;

UPDATE deliveries d SET final_at = coalesce(
    (SELECT max(a.ended_at) FROM attempts a WHERE a.delivery_id = d.id),
    d.last_attempt_at, s.ended_at, s.created_at)
FROM sessions s
WHERE s.id = d.session_id AND d.status IN ('delivered', 'failed', 'cancelled');

CREATE FUNCTION hub_delivery_final_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('delivered', 'failed', 'cancelled') THEN
        NEW.final_at := NULL;
    ELSIF TG_OP = 'INSERT' THEN
        NEW.final_at := coalesce(NEW.final_at, now());
    ELSIF OLD.status IS DISTINCT FROM NEW.status
          AND NEW.final_at IS NOT DISTINCT FROM OLD.final_at THEN
        NEW.final_at := now();   -- a status change that does not set final_at itself
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER deliveries_final_at BEFORE INSERT OR UPDATE OF status, final_at ON deliveries
    FOR EACH ROW EXECUTE FUNCTION hub_delivery_final_at();

-- /v1/usage reads an app's sessions that were open during the range: those still open
-- and those that ended after its start (an index range each), never other apps' rows.
CREATE INDEX sessions_app_ended ON sessions (app_id, ended_at);
CREATE INDEX sessions_app_open ON sessions (app_id) WHERE ended_at IS NULL;
