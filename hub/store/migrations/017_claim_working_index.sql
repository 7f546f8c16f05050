-- A claim takes a session's lapsed claims first (expired leases of workers and
-- controllers, not messages waiting for a receipt). This index holds only the deliveries
-- being worked on, per session in lease order, so that part of a claim reads the lapsed
-- ones and stops: never the session's thousands of messages waiting for their receipts.
CREATE INDEX deliveries_session_working ON deliveries (session_id, lease_until, id)
    WHERE status = 'in_progress' AND claimed_by IS DISTINCT FROM 'receipt';
