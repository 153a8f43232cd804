-- Write-side state of the command API (not a read model).

-- Handle reservations: the one place where handle uniqueness is decided, atomically, before a
-- UserRegistered event is appended. A reservation whose event could not be appended is removed.
CREATE TABLE command.handles (
    handle      text PRIMARY KEY,
    user_id     uuid NOT NULL UNIQUE,
    reserved_at timestamptz NOT NULL DEFAULT now()
);
