-- A user's counters are kept per partition of the log: the partition whose batch moved them. A
-- like moves the author's likes_received and the liker's likes_given, and a follow both users'
-- counters, from batches of whatever partition the post or the follower is in; with one row per
-- user, every batch waited at the counters for other partitions' batches that held the same
-- popular users' rows until their commit (in a rebuild of 1M events, most of the time of the
-- batches went to that wait). With a row per (user, partition), a row is only ever written by
-- its own partition's batches. A user's counter is the sum of their rows; rows from before keep
-- partition -1. Every existing generation changes alike.
DO $$
DECLARE
    generation_schema text;
BEGIN
    FOR generation_schema IN
        SELECT table_schema FROM information_schema.tables
        WHERE table_name = 'user_counters' AND table_schema ~ '^read_g[0-9]+$'
    LOOP
        EXECUTE format('ALTER TABLE %I.user_counters ADD COLUMN IF NOT EXISTS partition int NOT NULL DEFAULT -1',
                       generation_schema);
        EXECUTE format('ALTER TABLE %I.user_counters ALTER COLUMN partition DROP DEFAULT',
                       generation_schema);
        EXECUTE format('ALTER TABLE %I.user_counters DROP CONSTRAINT IF EXISTS user_counters_pkey',
                       generation_schema);
        EXECUTE format('ALTER TABLE %I.user_counters ADD PRIMARY KEY (user_id, partition)',
                       generation_schema);
    END LOOP;
END
$$;
