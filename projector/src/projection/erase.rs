//! Erasure (projection version 4): a user who asked to be erased leaves every read model.
//!
//! UserErased removes the user's profile, counters, search entry and notification watermark;
//! undoes their likes and follows, moving the counters of the others involved; turns their
//! posts into tombstones (no body, no likes, deleted at the erasure), which leave every feed, the
//! search and the reply counts of their parents; and removes every notification they made or
//! received. The user joins `erased_users` for good.
//!
//! The events that name an erased user sit in many partitions (a post's, a liker's, a
//! follower's), so some are applied before the erasure and some after, in an order that differs
//! from one generation to the next. Each is made to end the same either way:
//! - a post of theirs applied later becomes a tombstone at once (`step::publish`), like the
//!   posts the erasure found; a like of it finds no live post;
//! - a like, a follow (either way) or a read by them applied later changes nothing (the
//!   [`not_erased`] conditions);
//! - a reply to a post of theirs counts towards that post's reply count either way (the erasure
//!   leaves `post_counters` as it is) and notifies nobody (its parent is not live).
//!
//! That argument needs each batch to see either all of an erasure or none of it: a batch of
//! another partition that ran beside the erasure could insert a like the erasure did not see,
//! or miss the erasure and insert a like it should not. So a batch holds the generation's
//! erasure lock ([`hold_lock`]) from its start to its commit: shared by ordinary batches,
//! exclusive by one that erases. Erasures are rare; the shared lock costs ordinary batches
//! nothing but a statement sent with their first one.

use std::collections::BTreeSet;

use chronicle_events::UserErased;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::counters::{CounterDeltas, FOLLOWERS, FOLLOWING, LIKES_GIVEN, LIKES_RECEIVED};
use super::{execute, query};
use crate::generation::Layout;

/// Takes generation `schema`'s erasure lock until the transaction ends: `exclusive` for a
/// batch that erases, shared for any other (see the module's documentation).
pub(crate) async fn hold_lock(
    tx: &Transaction<'_>,
    schema: &str,
    exclusive: bool,
) -> Result<(), Error> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtextextended('chronicle.projection.erasure:' || $1, 0))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('chronicle.projection.erasure:' || $1, 0))"
    };
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, &[&schema]).await?;
    Ok(())
}

/// A condition that holds when none of `columns` is an erased user (always, in a layout
/// without erasure).
pub(super) fn not_erased(layout: Layout, columns: &[&str]) -> String {
    if !layout.erasure {
        return "true".to_owned();
    }
    format!(
        "NOT EXISTS (SELECT 1 FROM {{s}}.erased_users x WHERE x.user_id IN ({}))",
        columns.join(", ")
    )
}

/// Applies the erasures `events` (with their times).
pub(super) async fn erase(
    tx: &Transaction<'_>,
    schema: &str,
    layout: Layout,
    events: &[(&UserErased, DateTime<Utc>)],
    deltas: &mut CounterDeltas,
) -> Result<(), Error> {
    let mut users: Vec<Uuid> = events.iter().map(|(e, _)| e.user_id).collect();
    let mut at: Vec<DateTime<Utc>> = events.iter().map(|(_, at)| *at).collect();
    if layout.erasure {
        // The first erasure of a user is the one that counts: a second (a retried command)
        // finds their tombstones already dated. (Each step holds one erasure: see the planner.)
        let rows = query(
            tx,
            schema,
            "INSERT INTO {s}.erased_users AS x (user_id, erased_at)
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
             ON CONFLICT (user_id) DO UPDATE SET erased_at = x.erased_at
             RETURNING x.user_id, x.erased_at",
            &[&users, &at],
        )
        .await?;
        (users, at) = rows
            .iter()
            .map(|row| (row.get::<_, Uuid>(0), row.get::<_, DateTime<Utc>>(1)))
            .unzip();
    }
    let erased: BTreeSet<Uuid> = users.iter().copied().collect();

    // Their likes.
    let unliked = query(
        tx,
        schema,
        "WITH unliked AS (
             DELETE FROM {s}.likes l WHERE l.user_id = ANY($1) RETURNING l.post_id
         )
         SELECT p.post_id, p.author_id FROM unliked JOIN {s}.posts p USING (post_id)",
        &[&users],
    )
    .await?;
    for row in unliked {
        let (post, author): (Uuid, Uuid) = (row.get(0), row.get(1));
        deltas.add_like(post, -1);
        deltas.add(author, LIKES_RECEIVED, -1);
    }

    // Their posts become tombstones; the likes of those go.
    let posts = query(
        tx,
        schema,
        "WITH gone AS (
             SELECT p.post_id, p.reply_to, p.deleted_at IS NULL AS live, d.at
             FROM {s}.posts p
             JOIN unnest($1::uuid[], $2::timestamptz[]) AS d(user_id, at) ON d.user_id = p.author_id
             FOR UPDATE OF p
         ), tombstones AS (
             UPDATE {s}.posts p SET body = '', like_count = 0, deleted_at = gone.at
             FROM gone WHERE p.post_id = gone.post_id
         ), unliked AS (
             DELETE FROM {s}.likes l USING gone WHERE l.post_id = gone.post_id
             RETURNING l.user_id
         )
         SELECT post_id, reply_to, NULL::uuid FROM gone WHERE live
         UNION ALL
         SELECT NULL, NULL, user_id FROM unliked",
        &[&users, &at],
    )
    .await?;
    let mut tombstoned = Vec::new();
    for row in posts {
        match row.get::<_, Option<Uuid>>(2) {
            Some(liker) => deltas.add(liker, LIKES_GIVEN, -1),
            None => {
                tombstoned.push(row.get::<_, Uuid>(0));
                if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                    deltas.add_reply(parent, -1);
                }
            }
        }
    }

    // Their follows, both ways.
    let unfollowed = query(
        tx,
        schema,
        "DELETE FROM {s}.follows WHERE follower_id = ANY($1) OR followee_id = ANY($1)
         RETURNING follower_id, followee_id",
        &[&users],
    )
    .await?;
    for row in unfollowed {
        deltas.add(row.get(0), FOLLOWING, -1);
        deltas.add(row.get(1), FOLLOWERS, -1);
    }

    execute(
        tx,
        schema,
        "DELETE FROM {s}.users WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    execute(
        tx,
        schema,
        "DELETE FROM {s}.user_counters WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    if layout.notifications {
        execute(
            tx,
            schema,
            "DELETE FROM {s}.notifications WHERE recipient_id = ANY($1) OR actor_id = ANY($1)",
            &[&users],
        )
        .await?;
        execute(
            tx,
            schema,
            "DELETE FROM {s}.notification_reads WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
    }
    if layout.search {
        execute(
            tx,
            schema,
            "DELETE FROM {s}.user_search WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
        execute(
            tx,
            schema,
            "DELETE FROM {s}.post_search s USING {s}.posts p
             WHERE s.post_id = p.post_id AND p.author_id = ANY($1)",
            &[&users],
        )
        .await?;
    }
    // What the batch collected for them before this step is moot: their counters row is gone,
    // and there is nothing left for their messages to show.
    deltas.forget_users(&erased);
    tracing::info!(
        users = users.len(),
        posts = tombstoned.len(),
        "erased users from the read models"
    );
    Ok(())
}
