//! Notifications (projection version 2): who liked, followed or replied, withdrawn when that is
//! undone.
//!
//! Likes and follows are notified in the step that applies them: a like, its unlike and its post
//! share the post's partition, a follow and its unfollow the follower's, so the log orders them.
//! A reply is different: it sits in its own partition and its parent in another, so either may
//! be applied first. Its notification is settled once per batch, after the counters
//! ([`settle_replies`]): by then the batch holds the row lock on the parent's `post_counters`
//! row (a reply moves its parent's reply count, and every post published or deleted in the
//! batch takes its own row too), so two batches that could each miss the other's half of a
//! reply take turns, and the second sees what the first committed.
//!
//! Nobody is notified of their own acts (the table's check makes sure).

use std::collections::HashMap;

use chronicle_events::{NotificationsRead, PostLiked, UserFollowed};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::stream::Pushes;
use super::{execute, query};
use crate::generation::Layout;

/// Notifies the authors of newly liked posts. `new` holds the likes that were not there before
/// (post, liker, author); `events` the step's likes with their time and event id.
pub(super) async fn liked(
    tx: &Transaction<'_>,
    schema: &str,
    events: &[(&PostLiked, DateTime<Utc>, Uuid)],
    new: &[(Uuid, Uuid, Uuid)],
    pushes: &mut Pushes,
) -> Result<(), Error> {
    // Within a step, a (post, user) pair is liked at most once (the planner's `Like` row).
    let by_like: HashMap<(Uuid, Uuid), (DateTime<Utc>, Uuid)> = events
        .iter()
        .map(|(e, at, id)| ((e.post_id, e.user_id), (*at, *id)))
        .collect();
    let mut rows = Rows::default();
    for (post, liker, author) in new {
        if liker == author {
            continue;
        }
        if let Some((at, id)) = by_like.get(&(*post, *liker)) {
            rows.push(*id, *author, *liker, Some(*post), *at);
        }
    }
    rows.insert(tx, schema, "liked", pushes).await
}

/// Withdraws the notifications of the likes `(posts[i], users[i])`.
pub(super) async fn withdraw_likes(
    tx: &Transaction<'_>,
    schema: &str,
    posts: &[Uuid],
    users: &[Uuid],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "DELETE FROM {s}.notifications n
         USING unnest($1::uuid[], $2::uuid[]) AS d(post_id, actor_id)
         WHERE n.post_id = d.post_id AND n.actor_id = d.actor_id AND n.kind = 'liked'",
        &[&posts, &users],
    )
    .await
}

/// Withdraws the notifications of the likes of deleted `posts` (a deletion removes its likes).
pub(super) async fn withdraw_likes_of_posts(
    tx: &Transaction<'_>,
    schema: &str,
    posts: &[Uuid],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "DELETE FROM {s}.notifications WHERE post_id = ANY($1) AND kind = 'liked'",
        &[&posts],
    )
    .await
}

/// Notifies the users newly followed. `new` holds the follows that were not there before
/// (follower, followee); `events` the step's follows with their time and event id.
pub(super) async fn followed(
    tx: &Transaction<'_>,
    schema: &str,
    events: &[(&UserFollowed, DateTime<Utc>, Uuid)],
    new: &[(Uuid, Uuid)],
    pushes: &mut Pushes,
) -> Result<(), Error> {
    let by_follow: HashMap<(Uuid, Uuid), (DateTime<Utc>, Uuid)> = events
        .iter()
        .map(|(e, at, id)| ((e.follower_id, e.followee_id), (*at, *id)))
        .collect();
    let mut rows = Rows::default();
    for (follower, followee) in new {
        if follower == followee {
            continue;
        }
        if let Some((at, id)) = by_follow.get(&(*follower, *followee)) {
            rows.push(*id, *followee, *follower, None, *at);
        }
    }
    rows.insert(tx, schema, "followed", pushes).await
}

/// Withdraws the notifications of the follows `(followers[i], followees[i])`.
pub(super) async fn withdraw_follows(
    tx: &Transaction<'_>,
    schema: &str,
    followers: &[Uuid],
    followees: &[Uuid],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "DELETE FROM {s}.notifications n
         USING unnest($1::uuid[], $2::uuid[]) AS d(actor_id, recipient_id)
         WHERE n.kind = 'followed' AND n.recipient_id = d.recipient_id
           AND n.actor_id = d.actor_id",
        &[&followers, &followees],
    )
    .await
}

/// Moves each reader's watermark up to their `up_to` (never down: reads commute). An erased
/// reader has none.
pub(super) async fn mark_read(
    tx: &Transaction<'_>,
    schema: &str,
    layout: Layout,
    events: &[&NotificationsRead],
) -> Result<(), Error> {
    let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
    let up_to: Vec<Uuid> = events.iter().map(|e| e.up_to).collect();
    let sql = "INSERT INTO {s}.notification_reads AS r (user_id, up_to)
         SELECT d.* FROM unnest($1::uuid[], $2::uuid[]) AS d(user_id, up_to)
         WHERE {not_erased}
         ON CONFLICT (user_id) DO UPDATE SET up_to = greatest(r.up_to, EXCLUDED.up_to)"
        .replace(
            "{not_erased}",
            &super::erase::not_erased(layout, &["d.user_id"]),
        );
    execute(tx, schema, &sql, &[&users, &up_to]).await
}

/// Brings the notifications of replies in line with the posts `published` and `deleted` in this
/// batch: a reply notifies its parent's author while both posts are live and their authors
/// differ. Runs after the batch holds the `post_counters` rows of those posts and of their
/// parents (see the module's documentation). Returns the notifications made: id (the reply),
/// recipient, actor (the reply's author), parent.
pub(crate) async fn settle_replies(
    tx: &Transaction<'_>,
    schema: &str,
    published: &[Uuid],
    deleted: &[Uuid],
) -> Result<Vec<(Uuid, Uuid, Uuid, Uuid)>, Error> {
    if !deleted.is_empty() {
        // A deleted reply, or a reply to a deleted post, notifies nobody. One array of both
        // kinds of post, so that the plan is an index scan of `notifications_per_post`:
        // written as `post_id = ANY($1) OR post_id IN (...)`, it scanned the whole table
        // (20 ms a batch during a 200,000-event rebuild, with the batch's counters rows held).
        execute(
            tx,
            schema,
            "DELETE FROM {s}.notifications n
             WHERE n.kind = 'replied'
               AND n.post_id = ANY(array_cat($1::uuid[],
                   ARRAY(SELECT post_id FROM {s}.posts WHERE reply_to = ANY($1))))",
            &[&deleted],
        )
        .await?;
    }
    if published.is_empty() {
        return Ok(Vec::new());
    }
    // The batch's replies whose parent is here, and the replies already here to the batch's
    // posts.
    let made = query(
        tx,
        schema,
        "INSERT INTO {s}.notifications
                 (notification_id, recipient_id, kind, actor_id, post_id, created_at)
             SELECT r.post_id, p.author_id, 'replied', r.author_id, r.post_id, r.published_at
             FROM (SELECT * FROM {s}.posts WHERE post_id = ANY($1) AND reply_to IS NOT NULL
                   UNION
                   SELECT * FROM {s}.posts WHERE reply_to = ANY($1)) r
             JOIN {s}.posts p ON p.post_id = r.reply_to
             WHERE r.deleted_at IS NULL AND p.deleted_at IS NULL AND r.author_id <> p.author_id
             ON CONFLICT DO NOTHING
             RETURNING notification_id, recipient_id, actor_id,
                 (SELECT reply_to FROM {s}.posts WHERE post_id = notification_id)",
        &[&published],
    )
    .await?;
    Ok(made
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect())
}

/// Notifications to insert, as columns.
#[derive(Default)]
struct Rows {
    ids: Vec<Uuid>,
    recipients: Vec<Uuid>,
    actors: Vec<Uuid>,
    posts: Vec<Option<Uuid>>,
    at: Vec<DateTime<Utc>>,
}

impl Rows {
    fn push(
        &mut self,
        id: Uuid,
        recipient: Uuid,
        actor: Uuid,
        post: Option<Uuid>,
        at: DateTime<Utc>,
    ) {
        self.ids.push(id);
        self.recipients.push(recipient);
        self.actors.push(actor);
        self.posts.push(post);
        self.at.push(at);
    }

    /// Inserts the rows as notifications of `kind`; one already there stays as it is (the
    /// event was applied before). Each is pushed to its recipient's stream; a notification's
    /// id is the id of the event that made it.
    async fn insert(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        kind: &str,
        pushes: &mut Pushes,
    ) -> Result<(), Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        for ((id, recipient), actor) in self.ids.iter().zip(&self.recipients).zip(&self.actors) {
            pushes.notified(*id, *id, *recipient, *actor);
        }
        execute(
            tx,
            schema,
            "INSERT INTO {s}.notifications
                 (notification_id, recipient_id, kind, actor_id, post_id, created_at)
             SELECT d.id, d.recipient, $6::text, d.actor, d.post, d.at
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[])
                 AS d(id, recipient, actor, post, at)
             ON CONFLICT DO NOTHING",
            &[
                &self.ids,
                &self.recipients,
                &self.actors,
                &self.posts,
                &self.at,
                &kind,
            ],
        )
        .await
    }
}
