-- Projection version 2: notifications, added to the tables of read_models.sql in schema {schema}.
--
-- A notification tells its recipient that someone else liked their post, followed them, or
-- replied to their post. It exists exactly while what it describes does: an unlike, unfollow or
-- deletion withdraws it (the row goes). Its id orders notifications (newest first) and is what
-- NotificationsRead's `up_to` names:
--   liked:    the id of the PostLiked event (post_id: the post liked)
--   followed: the id of the UserFollowed event (post_id: null)
--   replied:  the id of the reply (post_id: the reply)
-- All three are UUIDv7 made by the command API when the command was accepted.
CREATE TABLE {schema}.notifications (
    notification_id uuid PRIMARY KEY,
    recipient_id    uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('liked', 'followed', 'replied')),
    actor_id        uuid NOT NULL,
    post_id         uuid,
    created_at      timestamptz NOT NULL,
    CHECK (actor_id <> recipient_id),
    CHECK ((kind = 'followed') = (post_id IS NULL))
);
-- A recipient's notifications, newest first.
CREATE INDEX notifications_by_recipient ON {schema}.notifications (recipient_id, notification_id DESC);
-- What an unlike or a deletion withdraws; at most one live notification per like and per reply.
CREATE UNIQUE INDEX notifications_per_post ON {schema}.notifications (post_id, actor_id, kind)
    WHERE post_id IS NOT NULL;
-- What an unfollow withdraws; at most one per follow.
CREATE UNIQUE INDEX notifications_per_follow ON {schema}.notifications (recipient_id, actor_id)
    WHERE kind = 'followed';

-- How far each user has read: every notification whose id is at most `up_to` is read. A
-- watermark rather than a flag per row, so that it does not matter whether a notification was
-- applied before or after the NotificationsRead that covers it (their partitions progress apart).
CREATE TABLE {schema}.notification_reads (
    user_id uuid PRIMARY KEY,
    up_to   uuid NOT NULL
);

-- Replies by parent: a reply's notification is made when both the reply and its parent are
-- applied, whichever comes second (they sit in different partitions).
CREATE INDEX posts_replies ON {schema}.posts (reply_to) WHERE reply_to IS NOT NULL;
