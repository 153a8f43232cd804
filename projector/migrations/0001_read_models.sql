-- Read models of Chronicle, owned and written only by the projector.

-- One row per registered user: the profile as the user's own events describe it.
CREATE TABLE projection.users (
    user_id      uuid PRIMARY KEY,
    handle       text NOT NULL UNIQUE,
    display_name text NOT NULL,
    bio          text NOT NULL DEFAULT '',
    joined_at    timestamptz NOT NULL
);

-- Counters about a user that events of other aggregates move (a like on someone's post, a new
-- follower). Kept apart from `users` so that a counter can move before the user's registration
-- is applied (it sits in another partition), and updated in user_id order to avoid deadlocks.
CREATE TABLE projection.user_counters (
    user_id         uuid PRIMARY KEY,
    post_count      bigint NOT NULL DEFAULT 0,
    follower_count  bigint NOT NULL DEFAULT 0,
    following_count bigint NOT NULL DEFAULT 0,
    likes_received  bigint NOT NULL DEFAULT 0,
    likes_given     bigint NOT NULL DEFAULT 0
);

-- Posts; a deleted post keeps its row (so that late likes stay ignored) but leaves every feed.
CREATE TABLE projection.posts (
    post_id      uuid PRIMARY KEY,
    author_id    uuid NOT NULL,
    body         text NOT NULL,
    published_at timestamptz NOT NULL,
    like_count   bigint NOT NULL DEFAULT 0,
    deleted_at   timestamptz
);
CREATE INDEX posts_feed ON projection.posts (published_at DESC, post_id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX posts_by_author ON projection.posts (author_id, published_at DESC, post_id DESC)
    WHERE deleted_at IS NULL;

-- Likes are a set of (post, user).
CREATE TABLE projection.likes (
    post_id  uuid NOT NULL,
    user_id  uuid NOT NULL,
    liked_at timestamptz NOT NULL,
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX likes_by_post ON projection.likes (post_id, liked_at DESC, user_id DESC);

-- Follows are a set of (follower, followee).
CREATE TABLE projection.follows (
    follower_id uuid NOT NULL,
    followee_id uuid NOT NULL,
    followed_at timestamptz NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_by_followee ON projection.follows (followee_id, followed_at DESC, follower_id DESC);
CREATE INDEX follows_by_follower ON projection.follows (follower_id, followed_at DESC, followee_id DESC);

-- The next offset to apply, per partition, written in the same transaction as the rows the
-- events up to it produced. Kafka's own committed offsets are never used.
CREATE TABLE projection.offsets (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Events that could not be decoded or applied, recorded and skipped.
CREATE TABLE projection.dead_letters (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    key         text,
    payload     bytea,
    error       text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);
