-- A registration's handle reservation carries its UserRegistered envelope (sealed, as the
-- idempotency rows keep envelopes) until the log has acknowledged that event. A reservation
-- still pending after CHRONICLE_PENDING_RETRY_SECS (a broker outage that left the outcome
-- unknown, a crash between the reservation and the append) has its event appended again in the
-- background and is then confirmed, so that a reserved handle always ends with its user in the
-- log, never stuck with a password and no user. A registration the log refused gives its
-- reservation up. Reservations made before this migration are confirmed (NULL).
ALTER TABLE command.handles ADD COLUMN pending_envelope bytea;
-- The reservations still to finish, oldest first.
CREATE INDEX handles_pending ON command.handles (reserved_at) WHERE pending_envelope IS NOT NULL;
