-- Every query for due deliveries names its session (claims, the reconciler's look for
-- stalled sessions): `deliveries_session_due` (015) serves them, and the global
-- `deliveries_due` only cost every insert and status change its upkeep.
DROP INDEX deliveries_due;
