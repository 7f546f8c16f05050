-- The delivery counters (008) look up each changed row's session by its key. Planned while
-- the sessions table is small (a fresh database, the first minutes of a busy one), that
-- lookup became a hash join over a sequential scan of every session, and the cached plan
-- kept scanning as the table grew: one full scan per delivery insert or update. Only the
-- primary key is ever the right way in, so the counting functions may not scan.
ALTER FUNCTION hub_count_deliveries() SET enable_seqscan = off;
ALTER FUNCTION hub_count_deliveries() SET enable_hashjoin = off;
ALTER FUNCTION hub_uncount_session_deliveries() SET enable_seqscan = off;
