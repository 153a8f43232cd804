//! One step of a batch: events that touch pairwise different rows, applied with one set-based
//! statement per event type.

use std::collections::HashMap;

use chronicle_events::{
    Envelope, Event, NotificationsRead, PostDeleted, PostLiked, PostPublished, PostUnliked,
    ProfileUpdated, Text, UserErased, UserFollowed, UserRegistered, UserUnfollowed,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::counters::{CounterDeltas, FOLLOWERS, FOLLOWING, LIKES_GIVEN, LIKES_RECEIVED, POSTS};
use super::{erase, execute, notify, query, search};
use crate::generation::Layout;

/// Events that touch pairwise different rows, by type.
#[derive(Default)]
pub(super) struct Step<'a> {
    registered: Vec<(&'a UserRegistered, DateTime<Utc>, Uuid)>,
    profiles: Vec<&'a ProfileUpdated>,
    published: Vec<(&'a PostPublished, DateTime<Utc>, Uuid)>,
    deleted: Vec<(&'a PostDeleted, DateTime<Utc>, Uuid)>,
    liked: Vec<(&'a PostLiked, DateTime<Utc>, Uuid)>,
    unliked: Vec<&'a PostUnliked>,
    followed: Vec<(&'a UserFollowed, DateTime<Utc>, Uuid)>,
    unfollowed: Vec<&'a UserUnfollowed>,
    read: Vec<&'a NotificationsRead>,
    erased: Vec<(&'a UserErased, DateTime<Utc>)>,
}

impl<'a> Step<'a> {
    pub(super) fn push(&mut self, envelope: &'a Envelope) {
        let (at, id) = (envelope.occurred_at, envelope.event_id);
        match &envelope.event {
            Event::UserRegistered(e) => self.registered.push((e, at, id)),
            Event::ProfileUpdated(e) => self.profiles.push(e),
            Event::PostPublished(e) => self.published.push((e, at, id)),
            Event::PostDeleted(e) => self.deleted.push((e, at, id)),
            Event::PostLiked(e) => self.liked.push((e, at, id)),
            Event::PostUnliked(e) => self.unliked.push(e),
            Event::UserFollowed(e) => self.followed.push((e, at, id)),
            Event::UserUnfollowed(e) => self.unfollowed.push(e),
            Event::NotificationsRead(e) => self.read.push(e),
            Event::UserErased(e) => self.erased.push((e, at)),
        }
    }

    pub(super) async fn apply(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        if !self.registered.is_empty() {
            self.register(tx, schema, layout, deltas).await?;
        }
        if !self.profiles.is_empty() {
            self.update_profiles(tx, schema, layout).await?;
        }
        if !self.published.is_empty() {
            self.publish(tx, schema, layout, deltas).await?;
        }
        if !self.deleted.is_empty() {
            self.delete(tx, schema, layout, deltas).await?;
        }
        if !self.liked.is_empty() {
            self.like(tx, schema, layout, deltas).await?;
        }
        if !self.unliked.is_empty() {
            self.unlike(tx, schema, layout, deltas).await?;
        }
        if !self.followed.is_empty() {
            self.follow(tx, schema, layout, deltas).await?;
        }
        if !self.unfollowed.is_empty() {
            self.unfollow(tx, schema, layout, deltas).await?;
        }
        if !self.read.is_empty() && layout.notifications {
            notify::mark_read(tx, schema, layout, &self.read).await?;
        }
        if !self.erased.is_empty() {
            erase::erase(tx, schema, layout, &self.erased, deltas).await?;
        }
        Ok(())
    }

    /// Registers users. With streams, each takes its counters row, where the batches of its
    /// acts meet it (see [`super::stream`]).
    async fn register(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.registered;
        let users: Vec<Uuid> = events.iter().map(|(e, _, _)| e.user_id).collect();
        let handles: Vec<&str> = events.iter().map(|(e, _, _)| e.handle.as_str()).collect();
        let names: Vec<&str> = events
            .iter()
            .map(|(e, _, _)| e.display_name.as_str())
            .collect();
        let bios: Vec<&str> = events.iter().map(|(e, _, _)| e.bio.as_str()).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at, _)| *at).collect();
        let new: Vec<Uuid> = query(
            tx,
            schema,
            "INSERT INTO {s}.users (user_id, handle, display_name, bio, joined_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
             ON CONFLICT (user_id) DO NOTHING
             RETURNING user_id",
            &[&users, &handles, &names, &bios, &at],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
        if layout.search {
            search::registered(tx, schema, &users, &handles, &names).await?;
        }
        if layout.streams {
            let by_user: HashMap<Uuid, Uuid> =
                events.iter().map(|(e, _, id)| (e.user_id, *id)).collect();
            for user in new {
                deltas.touch(user);
                if let Some(event) = by_user.get(&user) {
                    deltas.pushes.registered(*event, user);
                }
            }
        }
        Ok(())
    }

    async fn update_profiles(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
    ) -> Result<(), Error> {
        let events = &self.profiles;
        let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
        let names: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.display_name.as_ref().map(Text::as_str))
            .collect();
        let bios: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.bio.as_ref().map(Text::as_str))
            .collect();
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
        .await?;
        if layout.search {
            search::profiles_updated(tx, schema, &users, &names).await?;
        }
        Ok(())
    }

    /// Publishes posts. Their reply notifications are settled after the counters
    /// ([`super::notify::settle_replies`]). A post of an erased user becomes a tombstone, as
    /// their erasure made their other posts (see [`super::erase`]).
    async fn publish(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.published;
        let posts: Vec<Uuid> = events.iter().map(|(e, _, _)| e.post_id).collect();
        let authors: Vec<Uuid> = events.iter().map(|(e, _, _)| e.author_id).collect();
        let bodies: Vec<&str> = events.iter().map(|(e, _, _)| e.body.as_str()).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at, _)| *at).collect();
        let parents: Vec<Option<Uuid>> = events.iter().map(|(e, _, _)| e.reply_to).collect();
        let insert = if layout.erasure {
            "INSERT INTO {s}.posts (post_id, author_id, body, published_at, reply_to, deleted_at)
             SELECT d.post_id, d.author_id, CASE WHEN x.user_id IS NULL THEN d.body ELSE '' END,
                    d.at, d.reply_to, x.erased_at
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[])
                 AS d(post_id, author_id, body, at, reply_to)
             LEFT JOIN {s}.erased_users x ON x.user_id = d.author_id
             ON CONFLICT (post_id) DO NOTHING
             RETURNING author_id, reply_to, post_id, deleted_at IS NULL"
        } else {
            "INSERT INTO {s}.posts (post_id, author_id, body, published_at, reply_to)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[])
             ON CONFLICT (post_id) DO NOTHING
             RETURNING author_id, reply_to, post_id, true"
        };
        let rows = query(
            tx,
            schema,
            insert,
            &[&posts, &authors, &bodies, &at, &parents],
        )
        .await?;
        // Within a step, a post is published at most once (the planner's `Post` row).
        let by_post: HashMap<Uuid, Uuid> =
            events.iter().map(|(e, _, id)| (e.post_id, *id)).collect();
        let mut new = Vec::with_capacity(rows.len());
        for row in rows {
            let (author, post, live): (Uuid, Uuid, bool) = (row.get(0), row.get(2), row.get(3));
            if !live {
                continue;
            }
            deltas.add(author, POSTS, 1);
            if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                deltas.add_reply(parent, 1);
            }
            deltas.published(post);
            if let Some(event) = by_post.get(&post) {
                deltas.pushes.published(*event, post, author);
            }
            new.push(post);
        }
        if layout.search && !new.is_empty() {
            search::published(tx, schema, &new).await?;
        }
        Ok(())
    }

    /// Deletes posts and their likes. A row per deleted post (`liker` null) and per removed
    /// like comes back.
    async fn delete(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.deleted;
        let posts: Vec<Uuid> = events.iter().map(|(e, _, _)| e.post_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at, _)| *at).collect();
        let by_post: HashMap<Uuid, Uuid> =
            events.iter().map(|(e, _, id)| (e.post_id, *id)).collect();
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
             SELECT author_id, reply_to, NULL::uuid AS liker, post_id FROM deleted
             UNION ALL
             SELECT author_id, NULL, user_id, NULL FROM unliked",
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
                    let post: Uuid = row.get(3);
                    deltas.add(author, POSTS, -1);
                    if let Some(parent) = row.get::<_, Option<Uuid>>(1) {
                        deltas.add_reply(parent, -1);
                    }
                    deltas.deleted(post);
                    if let Some(event) = by_post.get(&post) {
                        deltas.pushes.deleted(*event, post, author);
                    }
                }
            }
        }
        if layout.notifications {
            notify::withdraw_likes_of_posts(tx, schema, &posts).await?;
        }
        if layout.search {
            search::deleted(tx, schema, &posts).await?;
        }
        Ok(())
    }

    /// Only a live post can be liked, and only by a user not erased; a like that arrives after
    /// the deletion or erasure is ignored.
    async fn like(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.liked;
        let posts: Vec<Uuid> = events.iter().map(|(e, _, _)| e.post_id).collect();
        let users: Vec<Uuid> = events.iter().map(|(e, _, _)| e.user_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at, _)| *at).collect();
        let sql = "WITH liked AS (
                 INSERT INTO {s}.likes (post_id, user_id, liked_at)
                 SELECT d.post_id, d.user_id, d.at
                 FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS d(post_id, user_id, at)
                 JOIN {s}.posts p ON p.post_id = d.post_id AND p.deleted_at IS NULL
                 WHERE {not_erased}
                 ON CONFLICT (post_id, user_id) DO NOTHING
                 RETURNING post_id, user_id
             )
             SELECT liked.post_id, liked.user_id, p.author_id
             FROM liked JOIN {s}.posts p USING (post_id)"
            .replace("{not_erased}", &erase::not_erased(layout, &["d.user_id"]));
        let rows = query(tx, schema, &sql, &[&posts, &users, &at]).await?;
        let mut new = Vec::with_capacity(rows.len());
        for row in &rows {
            let (post, liker, author): (Uuid, Uuid, Uuid) = (row.get(0), row.get(1), row.get(2));
            deltas.add_like(post, 1);
            deltas.add(liker, LIKES_GIVEN, 1);
            deltas.add(author, LIKES_RECEIVED, 1);
            new.push((post, liker, author));
        }
        if layout.notifications {
            notify::liked(tx, schema, events, &new, &mut deltas.pushes).await?;
        }
        Ok(())
    }

    async fn unlike(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
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
        if layout.notifications {
            notify::withdraw_likes(tx, schema, &posts, &users).await?;
        }
        Ok(())
    }

    async fn follow(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
        deltas: &mut CounterDeltas,
    ) -> Result<(), Error> {
        let events = &self.followed;
        let followers: Vec<Uuid> = events.iter().map(|(e, _, _)| e.follower_id).collect();
        let followees: Vec<Uuid> = events.iter().map(|(e, _, _)| e.followee_id).collect();
        let at: Vec<DateTime<Utc>> = events.iter().map(|(_, at, _)| *at).collect();
        // Nobody follows or is followed once erased.
        let sql = "INSERT INTO {s}.follows (follower_id, followee_id, followed_at)
             SELECT d.* FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
                 AS d(follower_id, followee_id, at)
             WHERE {not_erased}
             ON CONFLICT (follower_id, followee_id) DO NOTHING
             RETURNING follower_id, followee_id"
            .replace(
                "{not_erased}",
                &erase::not_erased(layout, &["d.follower_id", "d.followee_id"]),
            );
        let rows = query(tx, schema, &sql, &[&followers, &followees, &at]).await?;
        let mut new = Vec::with_capacity(rows.len());
        for row in &rows {
            let (follower, followee): (Uuid, Uuid) = (row.get(0), row.get(1));
            deltas.add(follower, FOLLOWING, 1);
            deltas.add(followee, FOLLOWERS, 1);
            new.push((follower, followee));
        }
        if layout.notifications {
            notify::followed(tx, schema, events, &new, &mut deltas.pushes).await?;
        }
        Ok(())
    }

    async fn unfollow(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        layout: Layout,
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
        if layout.notifications {
            notify::withdraw_follows(tx, schema, &followers, &followees).await?;
        }
        Ok(())
    }
}
