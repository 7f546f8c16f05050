-- Schema 008: counts for /metrics kept by triggers, and voice trunk grants.
--
-- /metrics reads `metric_counts` (a few rows per transport and status) plus the deltas not
-- folded in yet, instead of a GROUP BY over every delivery. Writers never update a shared
-- row: statement-level triggers append one row per (transport, status) a statement changed
-- to `metric_deltas` (no index, no row locks, nothing for two writers to contend on), and the
-- reader folds the deltas into `metric_counts` under an advisory lock.

CREATE TABLE metric_counts (
    metric text NOT NULL,            -- deliveries | sessions
    transport text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (metric, transport, status)
);

CREATE TABLE metric_deltas (
    metric text NOT NULL,
    transport text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL
);

-- Deliveries: +1 per new row, -1 per old row, summed per (session, status) then per transport;
-- an UPDATE that leaves the status alone (leases, errors) sums to zero and writes nothing.
CREATE FUNCTION hub_count_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO metric_deltas
        SELECT 'deliveries', s.transport_type, x.status, sum(x.n)
        FROM (SELECT session_id, status, count(*) AS n FROM new_rows GROUP BY 1, 2) x
        JOIN sessions s ON s.id = x.session_id GROUP BY 2, 3;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO metric_deltas
        SELECT 'deliveries', s.transport_type, x.status, sum(x.n)
        FROM (SELECT session_id, status, count(*) AS n FROM new_rows GROUP BY 1, 2
              UNION ALL
              SELECT session_id, status, -count(*) FROM old_rows GROUP BY 1, 2) x
        JOIN sessions s ON s.id = x.session_id GROUP BY 2, 3 HAVING sum(x.n) <> 0;
    ELSE
        -- A session deleted with its deliveries (cascade) is gone by now: its rows were
        -- subtracted by hub_uncount_session_deliveries before it went.
        INSERT INTO metric_deltas
        SELECT 'deliveries', s.transport_type, x.status, -sum(x.n)
        FROM (SELECT session_id, status, count(*) AS n FROM old_rows GROUP BY 1, 2) x
        JOIN sessions s ON s.id = x.session_id GROUP BY 2, 3;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hub_count_deliveries();
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hub_count_deliveries();
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION hub_count_deliveries();

CREATE FUNCTION hub_uncount_session_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_deltas
    SELECT 'deliveries', OLD.transport_type, status, -count(*)
    FROM deliveries WHERE session_id = OLD.id GROUP BY status;
    RETURN OLD;
END $$;

CREATE TRIGGER sessions_uncount_deliveries BEFORE DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION hub_uncount_session_deliveries();

CREATE FUNCTION hub_count_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO metric_deltas
        SELECT 'sessions', transport_type, status, count(*) FROM new_rows GROUP BY 2, 3;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO metric_deltas
        SELECT 'sessions', t, s, sum(n)
        FROM (SELECT transport_type AS t, status AS s, count(*) AS n FROM new_rows GROUP BY 1, 2
              UNION ALL
              SELECT transport_type, status, -count(*) FROM old_rows GROUP BY 1, 2) x
        GROUP BY 2, 3 HAVING sum(n) <> 0;
    ELSE
        INSERT INTO metric_deltas
        SELECT 'sessions', transport_type, status, -count(*) FROM old_rows GROUP BY 2, 3;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_count_insert AFTER INSERT ON sessions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hub_count_sessions();
CREATE TRIGGER sessions_count_update AFTER UPDATE ON sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION hub_count_sessions();
CREATE TRIGGER sessions_count_delete AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION hub_count_sessions();

-- TRUNCATE fires no row or statement-row triggers: start the affected counts from zero.
CREATE FUNCTION hub_uncount_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM metric_counts WHERE metric = TG_ARGV[0];
    DELETE FROM metric_deltas WHERE metric = TG_ARGV[0];
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_count_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hub_uncount_truncated('deliveries');
CREATE TRIGGER sessions_count_truncate AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION hub_uncount_truncated('sessions');

-- The counts of the rows already there (once, while migrating).
INSERT INTO metric_counts
SELECT 'deliveries', s.transport_type, d.status, count(*)
FROM deliveries d JOIN sessions s ON s.id = d.session_id GROUP BY 2, 3;
INSERT INTO metric_counts
SELECT 'sessions', transport_type, status, count(*) FROM sessions GROUP BY 2, 3;

-- Voice trunks (PJSIP endpoints) the operator granted to an app (DESIGN §3).
CREATE TABLE trunk_grants (
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    trunk text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, trunk)
);

-- Listing an app's keys and counting its active ones.
CREATE INDEX api_keys_app ON api_keys (app_id, created_at);
