-- Erasures: a row per user who asked to be erased (DELETE /v1/users/me). Only user ids and
-- times: nothing personal.
--
-- The row is written before UserErased is appended, and never deleted. `completed_at` is set
-- once the user's data key, sessions, credentials, handle reservation and idempotency rows are
-- gone; a row still without it is finished in the background (UserErased appended again, then
-- the deletions), so that a crash or a broker outage between the steps ends in a completed
-- erasure, never a stuck one. No data key is ever made for a user with a row here.
--
-- The projector reads it to tell a key destroyed by erasure from a key unknown: an event of a
-- user with a row here whose key is gone is applied with its sealed fields forgotten, then
-- undone by UserErased; an event whose key is unknown otherwise is a dead letter.
CREATE TABLE command.erasures (
    user_id      uuid PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
-- The erasures still to finish, oldest first.
CREATE INDEX erasures_pending ON command.erasures (requested_at) WHERE completed_at IS NULL;
