-- Generations: the read models live in one schema per generation (`read_<name>`), so that a
-- rebuild can fill a new generation from the whole log while the active one keeps serving, and
-- then take its place atomically. This schema (`projection`) keeps what spans generations.
CREATE TABLE projection.generations (
    name          text PRIMARY KEY CHECK (name ~ '^g[0-9]+$'),
    state         text NOT NULL CHECK (state IN ('building', 'active', 'retired')),
    -- The projection code that built it (crate::PROJECTION_VERSION); generations are compared
    -- by `verify` only when they were built by the same code.
    code_version  integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retired_at    timestamptz
);
CREATE UNIQUE INDEX generations_one_active ON projection.generations (state) WHERE state = 'active';

-- The read models built so far become generation g1.
CREATE SCHEMA read_g1;
ALTER TABLE projection.users SET SCHEMA read_g1;
ALTER TABLE projection.user_counters SET SCHEMA read_g1;
ALTER TABLE projection.posts SET SCHEMA read_g1;
ALTER TABLE projection.post_counters SET SCHEMA read_g1;
ALTER TABLE projection.likes SET SCHEMA read_g1;
ALTER TABLE projection.follows SET SCHEMA read_g1;
ALTER TABLE projection.applied_events SET SCHEMA read_g1;
INSERT INTO projection.generations (name, state, code_version, activated_at)
VALUES ('g1', 'active', 1, now());

-- Offsets and dead letters belong to a generation.
ALTER TABLE projection.offsets ADD COLUMN generation text NOT NULL DEFAULT 'g1'
    REFERENCES projection.generations (name) ON DELETE CASCADE;
ALTER TABLE projection.offsets ALTER COLUMN generation DROP DEFAULT;
ALTER TABLE projection.offsets DROP CONSTRAINT offsets_pkey;
ALTER TABLE projection.offsets ADD PRIMARY KEY (generation, topic, partition);

ALTER TABLE projection.dead_letters ADD COLUMN generation text NOT NULL DEFAULT 'g1'
    REFERENCES projection.generations (name) ON DELETE CASCADE;
ALTER TABLE projection.dead_letters ALTER COLUMN generation DROP DEFAULT;
ALTER TABLE projection.dead_letters DROP CONSTRAINT dead_letters_topic_partition_offset_key;
ALTER TABLE projection.dead_letters ADD UNIQUE (generation, topic, partition, "offset");
