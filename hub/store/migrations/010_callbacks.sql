-- Inbound callbacks (DESIGN §8.5): a recipient calls the trunk number back and the FastAGI
-- server replays the latest voice message sent to that number. One row per call that
-- reached the `callback` route; app/session/delivery are NULL for an unknown caller.
CREATE TABLE callbacks (
    id bigserial PRIMARY KEY,
    app_id uuid REFERENCES apps(id) ON DELETE CASCADE,
    session_id uuid REFERENCES sessions(id) ON DELETE CASCADE,
    delivery_id bigint REFERENCES deliveries(id) ON DELETE CASCADE,
    caller text NOT NULL,
    trunk text,
    channel text,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    listened_s double precision NOT NULL DEFAULT 0,
    digits text NOT NULL DEFAULT '',
    suppressed boolean NOT NULL DEFAULT false
);
CREATE INDEX callbacks_app_day ON callbacks (app_id, started_at);
CREATE INDEX callbacks_delivery ON callbacks (delivery_id);
