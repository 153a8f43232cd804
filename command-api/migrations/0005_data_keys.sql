-- Data keys: one AES-256 key per user, sealing the personal fields (handle, display name, bio,
-- post bodies) of the events they cause (events/src/personal.rs). They live here, outside the
-- log, so that destroying a user's key makes their personal data in the log unreadable
-- everywhere it was copied. The projector reads them (and only them) to open what it applies.
CREATE TABLE command.data_keys (
    user_id     uuid PRIMARY KEY,
    key_version integer NOT NULL,
    data_key    bytea NOT NULL CHECK (length(data_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
