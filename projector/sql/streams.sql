-- Projection version 3: what the query API's live streams push, added to schema {schema}.
--
-- One row per message, written in the transaction of the batch that applied its event and keyed
-- by that event's place in the log. A partition's batches commit in offset order, so the rows of
-- one partition become visible in offset order, and "every row of partition p from offset o on"
-- is a resume point that means the same in every generation. A stream's resume id is one such
-- offset per partition.
--
-- A row names what the message is about; its data is read from the other tables when it is
-- sent, so a message says what a read would say at that moment.
--   post:         a post was published (post_id, author_id)
--   post_deleted: a post was deleted (post_id, author_id)
--   notification: a notification was made (notification_id, recipient_id)
-- An event makes at most one message of each kind (a reply: a post and a notification).
--
-- Rows start from the moment a generation gets this table: a generation brought to version 3 in
-- place has none for the events it applied before.
CREATE TABLE {schema}.stream (
    partition       int    NOT NULL,
    event_offset    bigint NOT NULL,
    kind            text   NOT NULL CHECK (kind IN ('post', 'post_deleted', 'notification')),
    post_id         uuid,
    author_id       uuid,
    notification_id uuid,
    recipient_id    uuid,
    PRIMARY KEY (partition, event_offset, kind),
    CHECK (CASE kind WHEN 'notification' THEN notification_id IS NOT NULL AND recipient_id IS NOT NULL
                     ELSE post_id IS NOT NULL AND author_id IS NOT NULL END)
);

-- The notifications an actor made: those that wait for the actor's registration, in another
-- partition, to be streamed.
CREATE INDEX notifications_by_actor ON {schema}.notifications (actor_id);
