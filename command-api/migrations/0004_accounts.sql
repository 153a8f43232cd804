-- Accounts: passwords and sessions. Credentials never enter the event log, which is replayed,
-- copied and kept forever; they live here, owned by the command API alone.

-- One password per user, as an argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash): the
-- parameters travel with each hash, so raising them later leaves older hashes verifiable. A user
-- registered before passwords existed has no row until they set one.
CREATE TABLE command.credentials (
    user_id       uuid PRIMARY KEY REFERENCES command.handles (user_id) ON DELETE CASCADE,
    password_hash text NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
);

-- Sessions: a token is valid only while the session it names (its `sid` claim) is here. A
-- registration and each login open one; a logout deletes it; a password change or an erasure
-- deletes all of the user's. Services that accept tokens read this table (and only this one).
-- `expires_at` is when its tokens expire, after which the row is deleted in the background.
--
-- No foreign key to `handles`: a user registered by a foreign producer (straight to the log) has
-- no handle reservation, yet an operator may open a session for them. Whatever ends a user's
-- sessions (a password change, an erasure) deletes them itself.
CREATE TABLE command.sessions (
    session_id uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- NULL: a legacy session (below), deleted CHRONICLE_TOKEN_TTL_SECS after created_at.
    expires_at timestamptz
);
CREATE INDEX sessions_by_user ON command.sessions (user_id);
CREATE INDEX sessions_by_expiry ON command.sessions (expires_at);

-- Tokens issued before sessions carry no `sid`; they belong to their user's legacy session,
-- whose id is the user's id. Every user registered so far gets one, so that their tokens keep
-- working until they expire, they log out, or they set a password.
INSERT INTO command.sessions (session_id, user_id, created_at, expires_at)
SELECT user_id, user_id, now(), NULL FROM command.handles;
