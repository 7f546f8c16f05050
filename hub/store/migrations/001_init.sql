-- Connect Hub schema, version 1: apps, keys, transports, sessions, deliveries, attempts,
-- webhook outbox, idempotency keys, suppressions.

CREATE TABLE apps (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    webhook_secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key_hash bytea NOT NULL UNIQUE,
    prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE transports (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name text NOT NULL,
    type text NOT NULL,
    provider text NOT NULL,
    config jsonb NOT NULL,          -- non-secret settings, returned by the API
    secrets jsonb NOT NULL,         -- write-only settings, never returned or logged
    is_default boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, name)
);
CREATE UNIQUE INDEX transports_one_default ON transports (app_id, type) WHERE is_default;

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    transport_id uuid NOT NULL REFERENCES transports(id),
    transport_type text NOT NULL,
    xref text,
    status text NOT NULL,
    trigger text NOT NULL,
    instruction jsonb NOT NULL,     -- transport part of the instruction (subject, message, ...)
    scheduled_at timestamptz,
    retries integer NOT NULL,
    retry_intervals_s double precision[] NOT NULL,
    webhook_url text,
    audience_count integer NOT NULL,
    duplicates_removed integer NOT NULL,
    run integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    ended_at timestamptz
);
CREATE INDEX sessions_app_created ON sessions (app_id, created_at DESC, id DESC);
CREATE INDEX sessions_scheduled ON sessions (scheduled_at) WHERE status = 'scheduled';

CREATE TABLE deliveries (
    id bigserial PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    address text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,       -- every attempt, for numbering and display
    tries integer NOT NULL DEFAULT 0,          -- attempts that count against retries in this run
    outcome text,
    detail jsonb,
    duration_s double precision,
    provider_ref text,
    error text,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    lease_until timestamptz,
    UNIQUE (session_id, address)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retry_scheduled');
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'in_progress';
CREATE INDEX deliveries_session_status ON deliveries (session_id, status);

CREATE TABLE attempts (
    id uuid PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    outcome text,
    detail jsonb,
    provider_ref text,
    error text,
    UNIQUE (delivery_id, attempt)
);

CREATE TABLE webhook_events (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    session_id uuid REFERENCES sessions(id) ON DELETE CASCADE,
    url text NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',     -- pending | delivered | failed
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL DEFAULT now(),
    status_code integer,
    error text
);

CREATE TABLE idempotency_keys (
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    status_code integer,            -- NULL while the first request is still running
    body jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);

CREATE TABLE suppressions (
    id uuid PRIMARY KEY,
    app_id uuid NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    address text NOT NULL,
    transport_type text NOT NULL DEFAULT '*',   -- '*' = every transport type
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, address, transport_type)
);
