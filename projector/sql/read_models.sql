-- The read models of one generation, created in schema {schema} by `projector rebuild`.
-- Generation g1 was built by migrations 0001-0005 into the same shape; a change here is a new
-- projection (bump PROJECTION_VERSION) and reaches users through a rebuild.

-- Handles are unique where the command API reserves them, not here: two UserRegistered events
-- for one handle (from history written before outcome_unknown) both become users, and a lookup
-- by handle names the earliest (joined_at, then user_id). See projection.rs.
CREATE TABLE {schema}.users (
    user_id      uuid PRIMARY KEY,
    handle       text NOT NULL,
    display_name text NOT NULL,
    bio          text NOT NULL DEFAULT '',
    joined_at    timestamptz NOT NULL
);
CREATE INDEX users_handle ON {schema}.users (handle, joined_at, user_id);

-- Counters are updated in place again and again: half-empty pages keep those updates HOT (see
-- migrations/0009_counters_fillfactor.sql).
CREATE TABLE {schema}.user_counters (
    user_id         uuid PRIMARY KEY,
    post_count      bigint NOT NULL DEFAULT 0,
    follower_count  bigint NOT NULL DEFAULT 0,
    following_count bigint NOT NULL DEFAULT 0,
    likes_received  bigint NOT NULL DEFAULT 0,
    likes_given     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

CREATE TABLE {schema}.posts (
    post_id      uuid PRIMARY KEY,
    author_id    uuid NOT NULL,
    body         text NOT NULL,
    published_at timestamptz NOT NULL,
    like_count   bigint NOT NULL DEFAULT 0,
    deleted_at   timestamptz,
    reply_to     uuid
);
CREATE INDEX ON {schema}.posts (published_at DESC, post_id DESC) WHERE deleted_at IS NULL;
CREATE INDEX ON {schema}.posts (author_id, published_at DESC, post_id DESC)
    WHERE deleted_at IS NULL;

-- Half-empty pages, like user_counters.
CREATE TABLE {schema}.post_counters (
    post_id     uuid PRIMARY KEY,
    reply_count bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

CREATE TABLE {schema}.likes (
    post_id  uuid NOT NULL,
    user_id  uuid NOT NULL,
    liked_at timestamptz NOT NULL,
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX ON {schema}.likes (post_id, liked_at DESC, user_id DESC);

CREATE TABLE {schema}.follows (
    follower_id uuid NOT NULL,
    followee_id uuid NOT NULL,
    followed_at timestamptz NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX ON {schema}.follows (followee_id, followed_at DESC, follower_id DESC);
CREATE INDEX ON {schema}.follows (follower_id, followed_at DESC, followee_id DESC);

CREATE TABLE {schema}.applied_events (
    event_id uuid PRIMARY KEY
);
