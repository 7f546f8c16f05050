-- An idempotency key is stored with its answer, in the transaction of the work it
-- guards; while the first request runs it holds an advisory lock instead of a placeholder
-- row. Placeholders left by requests that died under the old scheme would block their
-- key until it expired: drop them, and require the answer from now on.
DELETE FROM idempotency_keys WHERE status_code IS NULL OR body IS NULL;
ALTER TABLE idempotency_keys
    ALTER COLUMN status_code SET NOT NULL,
    ALTER COLUMN body SET NOT NULL;
