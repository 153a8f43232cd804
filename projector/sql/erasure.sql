-- Projection version 4: erasure, added to the tables of read_models.sql in schema {schema}.
--
-- The users erased so far (UserErased), for good: an erased user's id never comes back. Their
-- rows are gone from every other table, and every event applied later that is by or about them
-- is left out or kept inert (see projection/erase.rs): a post of theirs becomes a tombstone (no
-- body, deleted at the erasure), a like or follow by or of them changes nothing. Whether such an
-- event comes before or after the erasure in the log (they sit in different partitions), the
-- read models end up the same, which is what makes a rebuild after an erasure agree with them.
-- Only ids and times: nothing personal.
CREATE TABLE {schema}.erased_users (
    user_id   uuid PRIMARY KEY,
    erased_at timestamptz NOT NULL
);

-- What an erasure finds of a user: every post of theirs, deleted ones too (their bodies stay
-- until then), and every like they gave. Without these, each erasure would scan both tables
-- while it holds the generation's erasure lock, and every batch waits for that.
CREATE INDEX posts_erasure ON {schema}.posts (author_id);
CREATE INDEX likes_erasure ON {schema}.likes (user_id);
