-- Engine: who a delivery is for (the audience, or a session-wide cc/bcc copy) and how
-- many of its attempts were cut short by a worker that stopped (capped, then failed).
ALTER TABLE deliveries ADD COLUMN role text NOT NULL DEFAULT 'to';     -- to | cc | bcc
ALTER TABLE deliveries ADD COLUMN interruptions integer NOT NULL DEFAULT 0;
