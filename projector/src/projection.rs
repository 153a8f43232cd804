//! How each event changes the read models.
//!
//! Each event's change is idempotent on its own (rows are sets keyed by what they describe), and
//! a counter moves only when a row really changed. Events are applied set-based: [`apply`] cuts
//! a batch into steps of events that touch different rows and runs one statement per event type
//! and step. Counters of users live in `user_counters` and are moved
//! through [`CounterDeltas`]: collected over a batch, then written once, in user-id order, so that
//! batches of different partitions that touch the same users never deadlock.
//!
//! The SQL names tables as `{s}.<table>`: `{s}` is the schema of the generation being built.

use std::collections::{BTreeMap, HashMap};

use chronicle_events::{
    Envelope, Event, PostDeleted, PostLiked, PostPublished, PostUnliked, ProfileUpdated,
    UserFollowed, UserRegistered, UserUnfollowed,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};
use uuid::Uuid;

use crate::generation::q;

/// One user's counter changes: post_count, follower_count, following_count, likes_received,
/// likes_given.
type Deltas = [i64; 5];
const POSTS: usize = 0;
const FOLLOWERS: usize = 1;
const FOLLOWING: usize = 2;
const LIKES_RECEIVED: usize = 3;
const LIKES_GIVEN: usize = 4;

/// Counter changes collected while applying events, written by [`CounterDeltas::write`]:
/// per user, and per post (replies).
#[derive(Debug, Default)]
pub(crate) struct CounterDeltas {
    users: BTreeMap<Uuid, Deltas>,
    replies: BTreeMap<Uuid, i64>,
    /// Like counts of posts: a popular post is liked many times in one batch, and one update
    /// per batch instead of one per like keeps its row from becoming the bottleneck.
    likes: BTreeMap<Uuid, i64>,
}

impl CounterDeltas {
    fn add(&mut self, user: Uuid, counter: usize, by: i64) {
        self.users.entry(user).or_default()[counter] += by;
    }

    fn add_reply(&mut self, parent: Uuid, by: i64) {
        *self.replies.entry(parent).or_default() += by;
    }

    fn add_like(&mut self, post: Uuid, by: i64) {
        *self.likes.entry(post).or_default() += by;
    }

    /// Adds `other`'s changes to these.
    pub(crate) fn merge(&mut self, other: CounterDeltas) {
        for (user, deltas) in other.users {
            let mine = self.users.entry(user).or_default();
            for (m, d) in mine.iter_mut().zip(deltas) {
                *m += d;
            }
        }
        for (post, by) in other.replies {
            self.add_reply(post, by);
        }
        for (post, by) in other.likes {
            self.add_like(post, by);
        }
    }

    /// Writes the changes: users, then posts, each in ascending id, so that concurrent batches
    /// take row locks in one global order.
    pub(crate) async fn write(&self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        self.write_users(tx, schema).await?;
        // Replies: the parent is in another partition, and may not even be applied yet.
        write_post_deltas(
            tx,
            schema,
            &self.replies,
            "INSERT INTO {s}.post_counters AS c (post_id, reply_count)
             SELECT * FROM unnest($1::uuid[], $2::int8[]) ORDER BY 1
             ON CONFLICT (post_id) DO UPDATE SET reply_count = c.reply_count + EXCLUDED.reply_count",
        )
        .await?;
        // Like counts live on the post's row; only this partition's batches touch it. A post
        // deleted earlier in the batch keeps its zero.
        write_post_deltas(
            tx,
            schema,
            &self.likes,
            "UPDATE {s}.posts p SET like_count = p.like_count + d.by
             FROM unnest($1::uuid[], $2::int8[]) AS d(post_id, by)
             WHERE p.post_id = d.post_id AND p.deleted_at IS NULL",
        )
        .await
    }

    async fn write_users(&self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        let changed: Vec<(&Uuid, &Deltas)> = self
            .users
            .iter()
            .filter(|(_, d)| d.iter().any(|n| *n != 0))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let users: Vec<Uuid> = changed.iter().map(|(user, _)| **user).collect();
        let column = |i: usize| -> Vec<i64> { changed.iter().map(|(_, d)| d[i]).collect() };
        let statement = tx
            .prepare_cached(&q(schema, "INSERT INTO {s}.user_counters AS c
                     (user_id, post_count, follower_count, following_count, likes_received, likes_given)
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                 ORDER BY 1
                 ON CONFLICT (user_id) DO UPDATE SET
                     post_count = c.post_count + EXCLUDED.post_count,
                     follower_count = c.follower_count + EXCLUDED.follower_count,
                     following_count = c.following_count + EXCLUDED.following_count,
                     likes_received = c.likes_received + EXCLUDED.likes_received,
                     likes_given = c.likes_given + EXCLUDED.likes_given")
            )
            .await?;
        tx.execute(
            &statement,
            &[
                &users,
                &column(POSTS),
                &column(FOLLOWERS),
                &column(FOLLOWING),
                &column(LIKES_RECEIVED),
                &column(LIKES_GIVEN),
            ],
        )
        .await?;
        Ok(())
    }
}

/// Applies `events` (in log order) to the read models; counter changes go to `deltas`.
///
/// Instead of one statement per event, the events are cut into [`Step`]s: an event goes into the
/// first step after every earlier event it depends on (see [`Touches`]). Within a step no two
/// events touch the same row, so the order among them does not matter, and each step is applied
/// with one set-based statement per event type. A batch of 500 events usually needs a handful
/// of steps, so a batch costs a few dozen statements instead of 500.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    schema: &str,
    events: &[&Envelope],
    deltas: &mut CounterDeltas,
) -> Result<(), Error> {
    for step in plan(events) {
        step.apply(tx, schema, deltas).await?;
    }
    Ok(())
}

/// A row, or a set of rows, that events read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Resource {
    /// A user's profile.
    User(Uuid),
    /// A post, together with all of its likes (a deletion removes them).
    Post(Uuid),
    /// One user's like of one post.
    Like(Uuid, Uuid),
    /// One follow edge.
    Follow(Uuid, Uuid),
}

/// What applying an event reads and writes. Counters are not rows here: they move by deltas,
/// which commute.
struct Touches {
    reads: Option<Resource>,
    writes: Resource,
}

fn touches(event: &Event) -> Touches {
    let write = |writes| Touches {
        reads: None,
        writes,
    };
    match event {
        Event::UserRegistered(e) => write(Resource::User(e.user_id)),
        Event::ProfileUpdated(e) => write(Resource::User(e.user_id)),
        Event::PostPublished(e) => write(Resource::Post(e.post_id)),
        Event::PostDeleted(e) => write(Resource::Post(e.post_id)),
        // A like needs the post's state: live or deleted.
        Event::PostLiked(e) => Touches {
            reads: Some(Resource::Post(e.post_id)),
            writes: Resource::Like(e.post_id, e.user_id),
        },
        Event::PostUnliked(e) => Touches {
            reads: Some(Resource::Post(e.post_id)),
            writes: Resource::Like(e.post_id, e.user_id),
        },
        Event::UserFollowed(e) => write(Resource::Follow(e.follower_id, e.followee_id)),
        Event::UserUnfollowed(e) => write(Resource::Follow(e.follower_id, e.followee_id)),
    }
}

/// Cuts `events` into steps.
fn plan<'a>(events: &[&'a Envelope]) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    for (envelope, step) in events.iter().zip(step_numbers(events)) {
        if steps.len() <= step {
            steps.resize_with(step + 1, Step::default);
        }
        steps[step].push(envelope);
    }
    steps
}

/// The step of each event: an event that writes a row goes after the last step that read or
/// wrote it; an event that reads a row goes after the last step that wrote it.
fn step_numbers(events: &[&Envelope]) -> Vec<usize> {
    /// Per row: 1 + the last step that wrote it, 1 + the last step that read it (0: none).
    #[derive(Default)]
    struct Seen {
        written: usize,
        read: usize,
    }
    let mut seen: HashMap<Resource, Seen> = HashMap::with_capacity(events.len());
    events
        .iter()
        .map(|envelope| {
            let Touches { reads, writes } = touches(&envelope.event);
            let after_writes = seen.get(&writes).map_or(0, |s| s.written.max(s.read));
            let after_reads = reads
                .and_then(|row| seen.get(&row))
                .map_or(0, |s| s.written);
            let step = after_writes.max(after_reads);
            seen.entry(writes).or_default().written = step + 1;
            if let Some(row) = reads {
                let entry = seen.entry(row).or_default();
                entry.read = entry.read.max(step + 1);
            }
            step
        })
        .collect()
}

/// Events that touch pairwise different rows, by type.
#[derive(Default)]
struct Step<'a> {
    registered: Vec<(&'a UserRegistered, DateTime<Utc>)>,
    profiles: Vec<&'a ProfileUpdated>,
    published: Vec<(&'a PostPublished, DateTime<Utc>)>,
    deleted: Vec<(&'a PostDeleted, DateTime<Utc>)>,
    liked: Vec<(&'a PostLiked, DateTime<Utc>)>,
    unliked: Vec<&'a PostUnliked>,
    followed: Vec<(&'a UserFollowed, DateTime<Utc>)>,
    unfollowed: Vec<&'a UserUnfollowed>,
}

impl<'a> Step<'a> {
    fn push(&mut self, envelope: &'a Envelope) {
        let at = envelope.occurred_at;
        match &envelope.event {
            Event::UserRegistered(e) => self.registered.push((e, at)),
            Event::ProfileUpdated(e) => self.profiles.push(e),
            Event::PostPublished(e) => self.published.push((e, at)),
            Event::PostDeleted(e) => self.deleted.push((e, at)),
            Event::PostLiked(e) => self.liked.push((e, at)),
            Event::PostUnliked(e) => self.unliked.push(e),
            Event::UserFollowed(e) => self.followed.push((e, at)),
            Event::UserUnfollowed(e) => self.unfollowed.push(e),
        }
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        if !self.registered.is_empty() {
            self.register(tx, schema).await?;
        }
        if !self.profiles.is_empty() {
            self.update_profiles(tx, schema).await?;
        }
        if !self.published.is_empty() {
            self.publish(tx, schema, deltas).await?;
        }
        if !self.deleted.is_empty() {
            self.delete(tx, schema, deltas).await?;
        }
        if !self.liked.is_empty() {
            self.like(tx, schema, deltas).await?;
        }
        if !self.unliked.is_empty() {
            self.unlike(tx, schema, deltas).await?;
        }
        if !self.followed.is_empty() {
            self.follow(tx, schema, deltas).await?;
        }
        if !self.unfollowed.is_empty() {
            self.unfollow(tx, schema, deltas).await?;
        }
        Ok(())
    }

    async fn register(&self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        let events = &self.registered;
        let users: Vec<Uuid> = events.iter().map(|(e, _)| e.user_id).collect();
        let handles: Vec<&str> = events.iter().map(|(e, _)| e.handle.as_str()).collect();
        let names: Vec<&str> = events
            .iter()
            .map(|(e, _)| e.display_name.as_str())
            .collect();
        let bios: Vec<&str> = events.iter().map(|(e, _)| e.bio.as_str()).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
        execute(
            tx,
            schema,
            "INSERT INTO {s}.users (user_id, handle, display_name, bio, joined_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
             ON CONFLICT (user_id) DO NOTHING",
            &[&users, &handles, &names, &bios, &at],
        )
        .await
    }

    async fn update_profiles(&self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        let events = &self.profiles;
        let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
        let names: Vec<Option<&str>> = events.iter().map(|e| e.display_name.as_deref()).collect();
        let bios: Vec<Option<&str>> = events.iter().map(|e| e.bio.as_deref()).collect();
        execute(
            tx,
            schema,
            "UPDATE {s}.users u
             SET display_name = coalesce(d.display_name, u.display_name),
                 bio = coalesce(d.bio, u.bio)
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS d(user_id, display_name, bio)
             WHERE u.user_id = d.user_id",
            &[&users, &names, &bios],
        )
        .await
    }

    async fn publish(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.published;
        let posts: Vec<Uuid> = events.iter().map(|(e, _)| e.post_id).collect();
        let authors: Vec<Uuid> = events.iter().map(|(e, _)| e.author_id).collect();
        let bodies: Vec<&str> = events.iter().map(|(e, _)| e.body.as_str()).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
        let parents: Vec<Option<Uuid>> = events.iter().map(|(e, _)| e.reply_to).collect();
        let rows = query(
            tx,
            schema,
            "INSERT INTO {s}.posts (post_id, author_id, body, published_at, reply_to)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[])
             ON CONFLICT (post_id) DO NOTHING
             RETURNING author_id, reply_to",
            &[&posts, &authors, &bodies, &at, &parents],
        )
        .await?;
        for row in rows {
            deltas.add(row.get(0), POSTS, 1);
            if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                deltas.add_reply(parent, 1);
            }
        }
        Ok(())
    }

    /// Deletes posts and their likes. A row per deleted post (`liker` null) and per removed
    /// like comes back.
    async fn delete(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.deleted;
        let posts: Vec<Uuid> = events.iter().map(|(e, _)| e.post_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
        let rows = query(
            tx,
            schema,
            "WITH deleted AS (
                 UPDATE {s}.posts p SET deleted_at = d.at, like_count = 0
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS d(post_id, at)
                 WHERE p.post_id = d.post_id AND p.deleted_at IS NULL
                 RETURNING p.post_id, p.author_id, p.reply_to
             ), unliked AS (
                 DELETE FROM {s}.likes l USING deleted
                 WHERE l.post_id = deleted.post_id
                 RETURNING deleted.author_id, l.user_id
             )
             SELECT author_id, reply_to, NULL::uuid AS liker FROM deleted
             UNION ALL
             SELECT author_id, NULL, user_id FROM unliked",
            &[&posts, &at],
        )
        .await?;
        for row in rows {
            let author: Uuid = row.get(0);
            match row.get::<_, Option<Uuid>>(2) {
                Some(liker) => {
                    deltas.add(liker, LIKES_GIVEN, -1);
                    deltas.add(author, LIKES_RECEIVED, -1);
                }
                None => {
                    deltas.add(author, POSTS, -1);
                    if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                        deltas.add_reply(parent, -1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Only a live post can be liked; a like that arrives after the deletion is ignored.
    async fn like(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.liked;
        let posts: Vec<Uuid> = events.iter().map(|(e, _)| e.post_id).collect();
        let users: Vec<Uuid> = events.iter().map(|(e, _)| e.user_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
        let rows = query(
            tx,
            schema,
            "WITH liked AS (
                 INSERT INTO {s}.likes (post_id, user_id, liked_at)
                 SELECT d.post_id, d.user_id, d.at
                 FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS d(post_id, user_id, at)
                 JOIN {s}.posts p ON p.post_id = d.post_id AND p.deleted_at IS NULL
                 ON CONFLICT (post_id, user_id) DO NOTHING
                 RETURNING post_id, user_id
             )
             SELECT liked.post_id, liked.user_id, p.author_id
             FROM liked JOIN {s}.posts p USING (post_id)",
            &[&posts, &users, &at],
        )
        .await?;
        for row in rows {
            deltas.add_like(row.get(0), 1);
            deltas.add(row.get(1), LIKES_GIVEN, 1);
            deltas.add(row.get(2), LIKES_RECEIVED, 1);
        }
        Ok(())
    }

    async fn unlike(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.unliked;
        let posts: Vec<Uuid> = events.iter().map(|e| e.post_id).collect();
        let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
        let rows = query(
            tx,
            schema,
            "WITH unliked AS (
                 DELETE FROM {s}.likes l
                 USING unnest($1::uuid[], $2::uuid[]) AS d(post_id, user_id)
                 WHERE l.post_id = d.post_id AND l.user_id = d.user_id
                 RETURNING l.post_id, l.user_id
             )
             SELECT unliked.post_id, unliked.user_id, p.author_id
             FROM unliked JOIN {s}.posts p USING (post_id)",
            &[&posts, &users],
        )
        .await?;
        for row in rows {
            deltas.add_like(row.get(0), -1);
            deltas.add(row.get(1), LIKES_GIVEN, -1);
            deltas.add(row.get(2), LIKES_RECEIVED, -1);
        }
        Ok(())
    }

    async fn follow(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.followed;
        let followers: Vec<Uuid> = events.iter().map(|(e, _)| e.follower_id).collect();
        let followees: Vec<Uuid> = events.iter().map(|(e, _)| e.followee_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
        let rows = query(
            tx,
            schema,
            "INSERT INTO {s}.follows (follower_id, followee_id, followed_at)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
             ON CONFLICT (follower_id, followee_id) DO NOTHING
             RETURNING follower_id, followee_id",
            &[&followers, &followees, &at],
        )
        .await?;
        for row in rows {
            deltas.add(row.get(0), FOLLOWING, 1);
            deltas.add(row.get(1), FOLLOWERS, 1);
        }
        Ok(())
    }

    async fn unfollow(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.unfollowed;
        let followers: Vec<Uuid> = events.iter().map(|e| e.follower_id).collect();
        let followees: Vec<Uuid> = events.iter().map(|e| e.followee_id).collect();
        let rows = query(
            tx,
            schema,
            "DELETE FROM {s}.follows f
             USING unnest($1::uuid[], $2::uuid[]) AS d(follower_id, followee_id)
             WHERE f.follower_id = d.follower_id AND f.followee_id = d.followee_id
             RETURNING f.follower_id, f.followee_id",
            &[&followers, &followees],
        )
        .await?;
        for row in rows {
            deltas.add(row.get(0), FOLLOWING, -1);
            deltas.add(row.get(1), FOLLOWERS, -1);
        }
        Ok(())
    }
}

/// Runs the generation-relative `sql` as a cached prepared statement.
async fn execute(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), Error> {
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.execute(&statement, params).await?;
    Ok(())
}

/// Like [`execute`], returning the rows.
async fn query(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.query(&statement, params).await
}

/// Runs `sql` with the non-zero `deltas` as `$1` (post ids, ascending) and `$2` (changes).
async fn write_post_deltas(
    tx: &Transaction<'_>,
    schema: &str,
    deltas: &BTreeMap<Uuid, i64>,
    sql: &str,
) -> Result<(), Error> {
    let (posts, by): (Vec<Uuid>, Vec<i64>) = deltas
        .iter()
        .filter(|(_, by)| **by != 0)
        .map(|(post, by)| (*post, *by))
        .unzip();
    if posts.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.execute(&statement, &[&posts, &by]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Event) -> Envelope {
        Envelope::new(Uuid::now_v7(), event)
    }

    fn liked(post: Uuid, user: Uuid) -> Envelope {
        envelope(Event::PostLiked(PostLiked {
            post_id: post,
            user_id: user,
        }))
    }

    fn unliked(post: Uuid, user: Uuid) -> Envelope {
        envelope(Event::PostUnliked(PostUnliked {
            post_id: post,
            user_id: user,
        }))
    }

    fn published(post: Uuid) -> Envelope {
        envelope(Event::PostPublished(PostPublished {
            post_id: post,
            author_id: Uuid::now_v7(),
            body: "hello".into(),
            reply_to: None,
        }))
    }

    fn deleted(post: Uuid) -> Envelope {
        envelope(Event::PostDeleted(PostDeleted {
            post_id: post,
            author_id: Uuid::now_v7(),
        }))
    }

    fn steps_of(events: &[Envelope]) -> Vec<usize> {
        let refs: Vec<&Envelope> = events.iter().collect();
        step_numbers(&refs)
    }

    #[test]
    fn likes_of_one_post_by_different_users_share_a_step() {
        let post = Uuid::now_v7();
        let events: Vec<Envelope> = (0..5).map(|_| liked(post, Uuid::now_v7())).collect();
        assert_eq!(steps_of(&events), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_like_waits_for_the_post_and_an_unlike_for_the_like() {
        let (post, user) = (Uuid::now_v7(), Uuid::now_v7());
        let events = [
            published(post),
            liked(post, user),
            liked(post, Uuid::now_v7()),
            unliked(post, user),
            liked(post, user),
        ];
        assert_eq!(steps_of(&events), [0, 1, 1, 2, 3]);
    }

    #[test]
    fn a_deletion_waits_for_earlier_likes_and_later_likes_wait_for_it() {
        let post = Uuid::now_v7();
        let events = [
            liked(post, Uuid::now_v7()),
            deleted(post),
            liked(post, Uuid::now_v7()),
        ];
        assert_eq!(steps_of(&events), [0, 1, 2]);
    }

    #[test]
    fn events_of_unrelated_rows_share_the_first_step() {
        let events = [
            published(Uuid::now_v7()),
            liked(Uuid::now_v7(), Uuid::now_v7()),
            deleted(Uuid::now_v7()),
            envelope(Event::UserFollowed(UserFollowed {
                follower_id: Uuid::now_v7(),
                followee_id: Uuid::now_v7(),
            })),
        ];
        assert_eq!(steps_of(&events), [0, 0, 0, 0]);
    }
}
