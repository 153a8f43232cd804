-- Replies (PostPublished v2): a post may answer another post.
ALTER TABLE projection.posts ADD COLUMN reply_to uuid;

-- Counters about a post that events of other posts move (a reply lives in the reply's partition,
-- not the parent's). Like user_counters, they may move before the post itself is applied.
CREATE TABLE projection.post_counters (
    post_id     uuid PRIMARY KEY,
    reply_count bigint NOT NULL DEFAULT 0
);
