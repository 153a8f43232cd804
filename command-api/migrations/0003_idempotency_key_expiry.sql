-- Idempotency keys live CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS: an older key is a new key, and the
-- command API deletes expired rows in the background, oldest first, in bounded batches.
CREATE INDEX idempotency_keys_created_at ON command.idempotency_keys (created_at);
