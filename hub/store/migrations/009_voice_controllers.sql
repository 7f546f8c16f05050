-- Each `hub voice` says which Asterisk it drives (its ARI URL), so that another controller
-- can ask that Asterisk whether a call of an expired claim is still live before dialling
-- the number again.
CREATE TABLE voice_controllers (
    id text PRIMARY KEY,
    ari_url text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
