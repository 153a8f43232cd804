//! How each event changes the read models.
//!
//! Every step is idempotent on its own (rows are sets keyed by what they describe), and a counter
//! moves only when a row really changed. Counters of users live in `user_counters` and are moved
//! through [`CounterDeltas`]: collected over a batch, then written once, in user-id order, so that
//! batches of different partitions that touch the same users never deadlock.
//!
//! The SQL names tables as `{s}.<table>`: `{s}` is the schema of the generation being built.

use std::collections::BTreeMap;

use chronicle_events::{Envelope, Event};
use deadpool_postgres::Transaction;
use tokio_postgres::Error;
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

/// Applies one event to the read models; counter changes go to `deltas`.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    schema: &str,
    envelope: &Envelope,
    deltas: &mut CounterDeltas,
) -> Result<(), Error> {
    let at = envelope.occurred_at;
    match &envelope.event {
        Event::UserRegistered(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "INSERT INTO {s}.users (user_id, handle, display_name, bio, joined_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
                ))
                .await?;
            tx.execute(
                &statement,
                &[&e.user_id, &e.handle, &e.display_name, &e.bio, &at],
            )
            .await?;
        }
        Event::ProfileUpdated(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "UPDATE {s}.users
                     SET display_name = coalesce($2, display_name), bio = coalesce($3, bio)
                     WHERE user_id = $1",
                ))
                .await?;
            tx.execute(&statement, &[&e.user_id, &e.display_name, &e.bio])
                .await?;
        }
        Event::PostPublished(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "INSERT INTO {s}.posts (post_id, author_id, body, published_at, reply_to)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (post_id) DO NOTHING",
                ))
                .await?;
            if tx
                .execute(
                    &statement,
                    &[&e.post_id, &e.author_id, &e.body, &at, &e.reply_to],
                )
                .await?
                == 1
            {
                deltas.add(e.author_id, POSTS, 1);
                if let Some(parent) = e.reply_to {
                    deltas.add_reply(parent, 1);
                }
            }
        }
        Event::PostDeleted(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "UPDATE {s}.posts SET deleted_at = $2, like_count = 0
                     WHERE post_id = $1 AND deleted_at IS NULL
                     RETURNING author_id, reply_to",
                ))
                .await?;
            let Some(row) = tx.query_opt(&statement, &[&e.post_id, &at]).await? else {
                return Ok(());
            };
            let author: Uuid = row.get(0);
            deltas.add(author, POSTS, -1);
            if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                deltas.add_reply(parent, -1);
            }
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "DELETE FROM {s}.likes WHERE post_id = $1 RETURNING user_id",
                ))
                .await?;
            for row in tx.query(&statement, &[&e.post_id]).await? {
                deltas.add(row.get(0), LIKES_GIVEN, -1);
                deltas.add(author, LIKES_RECEIVED, -1);
            }
        }
        Event::PostLiked(e) => {
            // Only a live post can be liked; a like that arrives after the deletion is ignored.
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "WITH post AS (
                         SELECT author_id FROM {s}.posts WHERE post_id = $1 AND deleted_at IS NULL
                     ), liked AS (
                         INSERT INTO {s}.likes (post_id, user_id, liked_at)
                         SELECT $1, $2, $3 FROM post
                         ON CONFLICT (post_id, user_id) DO NOTHING
                         RETURNING 1
                     )
                     SELECT author_id FROM post WHERE EXISTS (SELECT 1 FROM liked)",
                ))
                .await?;
            if let Some(row) = tx
                .query_opt(&statement, &[&e.post_id, &e.user_id, &at])
                .await?
            {
                deltas.add_like(e.post_id, 1);
                deltas.add(row.get(0), LIKES_RECEIVED, 1);
                deltas.add(e.user_id, LIKES_GIVEN, 1);
            }
        }
        Event::PostUnliked(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "WITH unliked AS (
                         DELETE FROM {s}.likes WHERE post_id = $1 AND user_id = $2 RETURNING 1
                     )
                     SELECT author_id FROM {s}.posts
                     WHERE post_id = $1 AND EXISTS (SELECT 1 FROM unliked)",
                ))
                .await?;
            if let Some(row) = tx.query_opt(&statement, &[&e.post_id, &e.user_id]).await? {
                deltas.add_like(e.post_id, -1);
                deltas.add(row.get(0), LIKES_RECEIVED, -1);
                deltas.add(e.user_id, LIKES_GIVEN, -1);
            }
        }
        Event::UserFollowed(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "INSERT INTO {s}.follows (follower_id, followee_id, followed_at)
                     VALUES ($1, $2, $3) ON CONFLICT (follower_id, followee_id) DO NOTHING",
                ))
                .await?;
            if tx
                .execute(&statement, &[&e.follower_id, &e.followee_id, &at])
                .await?
                == 1
            {
                deltas.add(e.follower_id, FOLLOWING, 1);
                deltas.add(e.followee_id, FOLLOWERS, 1);
            }
        }
        Event::UserUnfollowed(e) => {
            let statement = tx
                .prepare_cached(&q(
                    schema,
                    "DELETE FROM {s}.follows WHERE follower_id = $1 AND followee_id = $2",
                ))
                .await?;
            if tx
                .execute(&statement, &[&e.follower_id, &e.followee_id])
                .await?
                == 1
            {
                deltas.add(e.follower_id, FOLLOWING, -1);
                deltas.add(e.followee_id, FOLLOWERS, -1);
            }
        }
    }
    Ok(())
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
