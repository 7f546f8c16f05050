-- A claim takes the first due deliveries of one session. This index hands them over in
-- the claim's own order, so a claim reads what it takes and stops (before, each claim read
-- and sorted every due delivery of its session: quadratic in the session's size). Lapsed
-- claims are found through `deliveries_leased` (only expired leases are read).
CREATE INDEX deliveries_session_due ON deliveries (session_id, next_attempt_at, id)
    WHERE status IN ('pending', 'retry_scheduled');
