-- Content fetched for a session (email attachments), stored once by its SHA-256 and shared
-- by every session that sent the same bytes; a session records which blobs it sends, so
-- later jobs of the session read them here instead of fetching again.
CREATE TABLE blobs (
    sha256 bytea PRIMARY KEY,
    content_type text NOT NULL,
    size integer NOT NULL,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE sessions ADD COLUMN attachments jsonb;  -- [{sha256 (hex), filename, contentType}]
