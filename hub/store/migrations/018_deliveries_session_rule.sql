-- A 100,000-recipient post spent a third of its database time on two per-row checks
-- (EXPLAIN ANALYZE of the load: the deliveries → sessions foreign key 0.36 s, the final_at
-- trigger 0.08 s, of 1.45 s). The same rules, at the cost of one check per statement:

-- 1. final_at's trigger runs only where it has something to do: a row that is final, or
--    one that carries a final_at to clear (for any other row it would set NULL to NULL).
DROP TRIGGER deliveries_final_at ON deliveries;
CREATE TRIGGER deliveries_final_at BEFORE INSERT OR UPDATE OF status, final_at ON deliveries
    FOR EACH ROW
    WHEN (NEW.status IN ('delivered', 'failed', 'cancelled') OR NEW.final_at IS NOT NULL)
    EXECUTE FUNCTION hub_delivery_final_at();

-- 2. A delivery belongs to a session that exists, for as long as it exists. What the
--    foreign key did per row is done per statement, with the same guarantees:
--    - inserting deliveries locks their sessions FOR KEY SHARE (as the key did), so a
--      session cannot be deleted until the inserting transaction ends, and refuses
--      (23503) deliveries whose session does not exist (deleted meanwhile included);
--    - deleting sessions deletes their deliveries (and, by their own keys, their
--      attempts and callbacks), as ON DELETE CASCADE did; only at READ COMMITTED (what
--      every statement of the hub runs at): at a stricter level the delete's snapshot
--      could miss deliveries committed after it, which the key's cascade would catch;
--    - a delivery never moves to another session, and a session's id never changes;
--    - TRUNCATE sessions is refused unless deliveries are emptied with it.
--    Like 014's counters, these functions may reach rows only by their keys (a plan
--    cached while a table was small must not keep scanning it as it grows).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_session_id_fkey;

CREATE FUNCTION hub_deliveries_need_session() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing uuid;
BEGIN
    PERFORM 1 FROM sessions WHERE id IN (SELECT DISTINCT session_id FROM new_rows)
        ORDER BY id FOR KEY SHARE;
    SELECT n.session_id INTO missing FROM (SELECT DISTINCT session_id FROM new_rows) n
        WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = n.session_id) LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('insert or update on table "deliveries" violates the rule'
                             ' that its session exists: no session %s', missing),
            TABLE = 'deliveries', COLUMN = 'session_id',
            CONSTRAINT = 'deliveries_session_id_fkey';
    END IF;
    RETURN NULL;
END $$;
ALTER FUNCTION hub_deliveries_need_session() SET enable_seqscan = off;
ALTER FUNCTION hub_deliveries_need_session() SET enable_hashjoin = off;

CREATE TRIGGER deliveries_need_session AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hub_deliveries_need_session();

CREATE FUNCTION hub_refuse_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = CASE TG_TABLE_NAME WHEN 'deliveries'
                  THEN 'a delivery cannot move to another session'
                  ELSE 'a session''s id cannot change' END,
        TABLE = TG_TABLE_NAME, CONSTRAINT = 'deliveries_session_id_fkey';
END $$;

CREATE TRIGGER deliveries_keep_session BEFORE UPDATE OF session_id ON deliveries
    FOR EACH ROW WHEN (OLD.session_id IS DISTINCT FROM NEW.session_id)
    EXECUTE FUNCTION hub_refuse_session_change();

CREATE TRIGGER sessions_keep_id BEFORE UPDATE OF id ON sessions
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION hub_refuse_session_change();

CREATE FUNCTION hub_sessions_take_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE serialization_failure USING
            MESSAGE = 'sessions are deleted at READ COMMITTED only (their deliveries go'
                      ' with them, and a stricter snapshot could miss some)';
    END IF;
    DELETE FROM deliveries WHERE session_id IN (SELECT id FROM old_rows);
    RETURN NULL;
END $$;
ALTER FUNCTION hub_sessions_take_deliveries() SET enable_seqscan = off;
ALTER FUNCTION hub_sessions_take_deliveries() SET enable_hashjoin = off;

CREATE TRIGGER sessions_take_deliveries AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hub_sessions_take_deliveries();

CREATE FUNCTION hub_sessions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM deliveries) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'cannot truncate sessions while deliveries remain: truncate'
                      ' deliveries with it',
            TABLE = 'sessions', CONSTRAINT = 'deliveries_session_id_fkey';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_truncated AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION hub_sessions_truncated();
