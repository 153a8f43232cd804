-- Ids of the events applied so far. An event appended twice (a command retried with the same
-- Idempotency-Key after its first answer was lost) affects the read models only once.
CREATE TABLE projection.applied_events (
    event_id uuid PRIMARY KEY
);
