-- Idempotency keys: the first event appended for a (user, key), and where it landed.
--
-- A retry with the same key is answered from here and never appends a new event. If the first
-- attempt's answer was lost (the broker acknowledged, then the process died), `position` is
-- still null and the retry appends the *same* envelope again; the projector applies an event id
-- only once, so the duplicate has no effect.
CREATE TABLE command.idempotency_keys (
    scope       uuid NOT NULL,         -- the acting user; the nil UUID for registrations
    key         text NOT NULL,
    fingerprint text NOT NULL,         -- what the command was, to refuse a key reused for another
    envelope    bytea NOT NULL,        -- the event, exactly as appended
    partition   integer,
    "offset"    bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
