//! Counter changes: collected while a batch is applied, then written once, in user-id order, so
//! that batches of different partitions that touch the same users never deadlock.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::stream::Pushes;
use super::{notify, write_post_deltas};
use crate::generation::{Layout, q};

/// One user's counter changes: post_count, follower_count, following_count, likes_received,
/// likes_given.
type Deltas = [i64; 5];
pub(super) const POSTS: usize = 0;
pub(super) const FOLLOWERS: usize = 1;
pub(super) const FOLLOWING: usize = 2;
pub(super) const LIKES_RECEIVED: usize = 3;
pub(super) const LIKES_GIVEN: usize = 4;

/// Counter changes collected while applying events, written by [`CounterDeltas::write`]:
/// per user, and per post (replies).
#[derive(Debug, Default)]
pub(crate) struct CounterDeltas {
    users: BTreeMap<Uuid, Deltas>,
    replies: BTreeMap<Uuid, i64>,
    /// Like counts of posts: a popular post is liked many times in one batch, and one update
    /// per batch instead of one per like keeps its row from becoming the bottleneck.
    likes: BTreeMap<Uuid, i64>,
    /// Posts published and deleted by the batch, whose reply notifications are settled after
    /// the counters (see [`super::notify`]).
    published: Vec<Uuid>,
    deleted: Vec<Uuid>,
    /// Users whose counters row the batch takes even without a change (their registration:
    /// see [`super::stream`]).
    touched: BTreeSet<Uuid>,
    /// What the batch's events push to live streams (projection version 3), written by the
    /// batch, which knows their offsets.
    pub(crate) pushes: Pushes,
}

impl CounterDeltas {
    pub(super) fn add(&mut self, user: Uuid, counter: usize, by: i64) {
        self.users.entry(user).or_default()[counter] += by;
    }

    /// Takes `user`'s counters row in this batch, changed or not.
    pub(super) fn touch(&mut self, user: Uuid) {
        self.users.entry(user).or_default();
        self.touched.insert(user);
    }

    pub(super) fn add_reply(&mut self, parent: Uuid, by: i64) {
        *self.replies.entry(parent).or_default() += by;
    }

    pub(super) fn add_like(&mut self, post: Uuid, by: i64) {
        *self.likes.entry(post).or_default() += by;
    }

    pub(super) fn published(&mut self, post: Uuid) {
        self.published.push(post);
    }

    pub(super) fn deleted(&mut self, post: Uuid) {
        self.deleted.push(post);
    }

    /// Drops what was collected for the `erased` users: their counters row is gone, and so is
    /// everything their messages would show.
    pub(super) fn forget_users(&mut self, erased: &BTreeSet<Uuid>) {
        self.users.retain(|user, _| !erased.contains(user));
        self.touched.retain(|user| !erased.contains(user));
        self.pushes.forget_users(erased);
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
        self.published.extend(other.published);
        self.deleted.extend(other.deleted);
        self.touched.extend(other.touched);
        self.pushes.merge(other.pushes);
    }

    /// Writes the changes. Like counts first: they live on the post's row, which only this
    /// partition's batches touch (a post deleted earlier in the batch keeps its zero). Then the
    /// counters that batches of other partitions also move, reply counts then users, each in
    /// ascending id, so that concurrent batches take those row locks in one global order (no
    /// deadlock) and as late as possible: each is held until the commit that follows. Users
    /// come last because they are the most contended (a popular author's row is moved by the
    /// likes of every partition): what runs after them is only what must.
    ///
    /// With notifications (`layout`), every post published or deleted by the batch also takes
    /// its own `post_counters` row (a change of 0), and the reply notifications are settled
    /// after that: the rows are where two batches that publish a reply and its parent meet.
    /// With streams, the messages are settled after the users' rows (see `super::stream`).
    pub(crate) async fn write(
        &mut self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
    ) -> Result<(), Error> {
        write_post_deltas(
            tx,
            schema,
            &self.likes,
            false,
            "UPDATE {s}.posts p SET like_count = p.like_count + d.by
             FROM unnest($1::uuid[], $2::int8[]) AS d(post_id, by)
             WHERE p.post_id = d.post_id AND p.deleted_at IS NULL",
        )
        .await?;
        let settle =
            layout.notifications && !(self.published.is_empty() && self.deleted.is_empty());
        let mut replies = self.replies.clone();
        if settle {
            for post in self.published.iter().chain(&self.deleted) {
                replies.entry(*post).or_default();
            }
        }
        // Replies: the parent is in another partition, and may not even be applied yet.
        write_post_deltas(
            tx,
            schema,
            &replies,
            settle,
            "INSERT INTO {s}.post_counters AS c (post_id, reply_count)
             SELECT * FROM unnest($1::uuid[], $2::int8[]) ORDER BY 1
             ON CONFLICT (post_id) DO UPDATE SET reply_count = c.reply_count + EXCLUDED.reply_count",
        )
        .await?;
        if settle {
            let replied =
                notify::settle_replies(tx, schema, &self.published, &self.deleted).await?;
            for (id, recipient, actor, parent) in replied {
                self.pushes.notified_of_reply(id, recipient, actor, parent);
            }
        }
        if layout.streams {
            // The users the batch's messages wait for meet their registration's batch at their
            // counters row, even where their changes cancel out (see `super::stream`).
            for user in self.pushes.confirm_users(tx, schema).await? {
                self.touch(user);
            }
        }
        self.write_users(tx, schema).await?;
        if layout.streams {
            self.pushes.settle(tx, schema).await?;
        }
        Ok(())
    }

    async fn write_users(&self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        let changed: Vec<(&Uuid, &Deltas)> = self
            .users
            .iter()
            .filter(|(user, d)| d.iter().any(|n| *n != 0) || self.touched.contains(*user))
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
