-- Dashboard logins (DESIGN §6): the cookie holds an opaque random token, never the API key.
-- Only the token's SHA-256 is stored. A login belongs to the key it was opened with: a
-- revoked key's logins stop working at once (the lookup joins api_keys), and deleting the
-- key deletes them.
CREATE TABLE dashboard_logins (
    token_hash bytea PRIMARY KEY,
    key_id uuid NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX dashboard_logins_expiry ON dashboard_logins (expires_at);
CREATE INDEX dashboard_logins_key ON dashboard_logins (key_id);
