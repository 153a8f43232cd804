//! What live streams push (projection version 3): one row of `stream` per message, keyed by the
//! place in the log of the event that made it (see `sql/streams.sql`).
//!
//! Steps collect the messages by the id of the event that made them; the batch, which knows
//! where its events sit in the log, writes them: those it can before it takes any counters row
//! ([`Pushes::write_ready`]), the rest at the end ([`Pushes::write`]). An event that
//! has no place in this batch (an operator's retry of a dead letter, applied long after its
//! partition moved on) is pushed to nobody: a stream past its offset would never see the row.
//!
//! A message is pushed only once the read it describes would show it, and reads show a post or
//! a notification only once its author or actor is a user: their registration sits in another
//! partition and may be applied later. A user is removed only by an erasure, which runs alone
//! (it holds the erasure lock, see `super::erase`) and drops the messages it makes moot, so an
//! author or actor already a user before the batch takes its locks stays one until it commits,
//! and their messages are written at once. For
//! each of the others, the batch takes their `user_counters` row, and a registration takes its
//! own (a change of 0 where nothing changed), so a batch that acts and one that registers the
//! actor take turns there, and the second sees what the first committed: [`Pushes::settle`],
//! after the counters, keeps the messages whose author or actor is a user by then, and makes
//! those of posts and notifications that waited for a user registered in this batch.

use std::collections::{BTreeSet, HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::{execute, query};

/// One message, before its event's offset is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// A post was published.
    Post { post: Uuid, author: Uuid },
    /// A post was deleted.
    PostDeleted { post: Uuid, author: Uuid },
    /// A notification was made.
    Notification {
        id: Uuid,
        recipient: Uuid,
        actor: Uuid,
    },
}

impl Push {
    /// The user a read of this message needs: the post's author, the notification's actor.
    fn needs(&self) -> Option<Uuid> {
        match *self {
            Push::Post { author, .. } => Some(author),
            Push::Notification { actor, .. } => Some(actor),
            Push::PostDeleted { .. } => None,
        }
    }
}

/// The messages a batch makes, by the id of the event that made each.
#[derive(Debug, Default)]
pub(crate) struct Pushes {
    /// Those not written yet.
    pushes: Vec<(Uuid, Push)>,
    /// Those written before the batch took its counters rows ([`Pushes::write_ready`]).
    written: Vec<(Uuid, Push)>,
    /// The event that published each post of the batch: a reply's notification is made by
    /// whichever of the reply and its parent comes second.
    publications: HashMap<Uuid, Uuid>,
    /// The users registered by the batch, by the event that registered each.
    registrations: HashMap<Uuid, Uuid>,
    /// Authors and actors known to be users.
    present: HashSet<Uuid>,
}

impl Pushes {
    pub(super) fn published(&mut self, event: Uuid, post: Uuid, author: Uuid) {
        self.publications.insert(post, event);
        self.pushes.push((event, Push::Post { post, author }));
    }

    pub(super) fn deleted(&mut self, event: Uuid, post: Uuid, author: Uuid) {
        self.pushes
            .push((event, Push::PostDeleted { post, author }));
    }

    pub(super) fn notified(&mut self, event: Uuid, id: Uuid, recipient: Uuid, actor: Uuid) {
        let push = Push::Notification {
            id,
            recipient,
            actor,
        };
        self.pushes.push((event, push));
    }

    pub(super) fn registered(&mut self, event: Uuid, user: Uuid) {
        self.registrations.insert(user, event);
    }

    /// A notification about a reply (`id`, `recipient`, `actor`: the reply's author), made by
    /// this batch's publication of the reply or of its `parent`.
    pub(super) fn notified_of_reply(
        &mut self,
        id: Uuid,
        recipient: Uuid,
        actor: Uuid,
        parent: Uuid,
    ) {
        let event = self
            .publications
            .get(&id)
            .or_else(|| self.publications.get(&parent));
        if let Some(event) = event.copied() {
            self.notified(event, id, recipient, actor);
        }
    }

    /// Drops the messages about the `erased` users' posts and the notifications they made or
    /// received.
    pub(super) fn forget_users(&mut self, erased: &BTreeSet<Uuid>) {
        self.pushes.retain(|(_, push)| match *push {
            Push::Post { author, .. } | Push::PostDeleted { author, .. } => {
                !erased.contains(&author)
            }
            Push::Notification {
                recipient, actor, ..
            } => !erased.contains(&recipient) && !erased.contains(&actor),
        });
        self.registrations.retain(|user, _| !erased.contains(user));
        self.present.retain(|user| !erased.contains(user));
    }

    /// Adds `other`'s messages to these.
    pub(crate) fn merge(&mut self, other: Pushes) {
        self.pushes.extend(other.pushes);
        self.written.extend(other.written);
        self.publications.extend(other.publications);
        self.registrations.extend(other.registrations);
        self.present.extend(other.present);
    }

    /// The authors and actors the messages need that are not known to be users yet.
    fn unconfirmed_users(&self) -> Vec<Uuid> {
        let mut needed: Vec<Uuid> = self
            .pushes
            .iter()
            .filter_map(|(_, p)| p.needs())
            .filter(|user| !self.present.contains(user))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    }

    /// Confirms the authors and actors already users (only an erasure removes one, and none
    /// runs beside this batch, so that holds until the commit), before the batch takes the users' counters rows; returns the others,
    /// whose counters rows the batch must take before [`Pushes::settle`].
    pub(crate) async fn confirm_users(
        &mut self,
        tx: &Transaction<'_>,
        schema: &str,
    ) -> Result<Vec<Uuid>, Error> {
        let needed = self.unconfirmed_users();
        if !needed.is_empty() {
            self.present.extend(users_among(tx, schema, &needed).await?);
        }
        Ok(self.unconfirmed_users())
    }

    /// Keeps the messages whose author or actor is a user, and adds those that waited for a
    /// user registered in this batch (see the module's documentation). Runs after the batch
    /// holds the `user_counters` rows of the users [`Pushes::confirm_users`] did not confirm
    /// and of those it registered.
    pub(crate) async fn settle(&mut self, tx: &Transaction<'_>, schema: &str) -> Result<(), Error> {
        let needed = self.unconfirmed_users();
        if !needed.is_empty() {
            self.present.extend(users_among(tx, schema, &needed).await?);
            let present = &self.present;
            self.pushes
                .retain(|(_, push)| push.needs().is_none_or(|user| present.contains(&user)));
        }
        if self.registrations.is_empty() {
            return Ok(());
        }
        let users: Vec<Uuid> = self.registrations.keys().copied().collect();
        let waiting = query(
            tx,
            schema,
            "SELECT 'post', post_id, author_id, author_id FROM {s}.posts
             WHERE author_id = ANY($1) AND deleted_at IS NULL
             UNION ALL
             SELECT 'notification', notification_id, recipient_id, actor_id FROM {s}.notifications
             WHERE actor_id = ANY($1)",
            &[&users],
        )
        .await?;
        let pushed: HashSet<Uuid> = self
            .pushes
            .iter()
            .chain(&self.written)
            .filter_map(|(_, push)| match *push {
                Push::Post { post, .. } => Some(post),
                Push::Notification { id, .. } => Some(id),
                Push::PostDeleted { .. } => None,
            })
            .collect();
        for row in waiting {
            let (kind, id, owner, user): (&str, Uuid, Uuid, Uuid) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if pushed.contains(&id) {
                continue;
            }
            let Some(event) = self.registrations.get(&user).copied() else {
                continue;
            };
            let push = if kind == "post" {
                Push::Post {
                    post: id,
                    author: owner,
                }
            } else {
                Push::Notification {
                    id,
                    recipient: owner,
                    actor: user,
                }
            };
            self.pushes.push((event, push));
        }
        Ok(())
    }

    /// Writes the messages whose author or actor is known to be a user (most of them), before
    /// the batch takes any counters row: the fewer statements run while it holds them, the
    /// less the batches of other partitions wait for them. The others wait for
    /// [`Pushes::write`], after [`Pushes::settle`].
    pub(crate) async fn write_ready(
        &mut self,
        tx: &Transaction<'_>,
        schema: &str,
        partition: i32,
        offsets: &HashMap<Uuid, i64>,
    ) -> Result<(), Error> {
        self.confirm_users(tx, schema).await?;
        let present = &self.present;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pushes)
            .into_iter()
            .partition(|(_, push)| push.needs().is_none_or(|user| present.contains(&user)));
        self.pushes = waiting;
        write_rows(tx, schema, partition, offsets, &ready).await?;
        self.written.extend(ready);
        Ok(())
    }

    /// Writes the messages not written yet.
    pub(crate) async fn write(
        &self,
        tx: &Transaction<'_>,
        schema: &str,
        partition: i32,
        offsets: &HashMap<Uuid, i64>,
    ) -> Result<(), Error> {
        write_rows(tx, schema, partition, offsets, &self.pushes).await
    }
}

/// Writes the `pushes` of events that sit in `partition` at the offsets `offsets` gives (by
/// event id); those of other events are dropped (see the module's documentation).
async fn write_rows(
    tx: &Transaction<'_>,
    schema: &str,
    partition: i32,
    offsets: &HashMap<Uuid, i64>,
    pushes: &[(Uuid, Push)],
) -> Result<(), Error> {
    let mut rows = Rows::default();
    for (event, push) in pushes {
        if let Some(offset) = offsets.get(event) {
            rows.push(*offset, push);
        }
    }
    if rows.offsets.is_empty() {
        return Ok(());
    }
    execute(
        tx,
        schema,
        "INSERT INTO {s}.stream
             (partition, event_offset, kind, post_id, author_id, notification_id, recipient_id)
         SELECT $1, * FROM unnest($2::int8[], $3::text[], $4::uuid[], $5::uuid[], $6::uuid[],
                                  $7::uuid[])
         ON CONFLICT DO NOTHING",
        &[
            &partition,
            &rows.offsets,
            &rows.kinds,
            &rows.posts,
            &rows.authors,
            &rows.notifications,
            &rows.recipients,
        ],
    )
    .await
}

/// Stream rows, as columns.
#[derive(Default)]
struct Rows {
    offsets: Vec<i64>,
    kinds: Vec<&'static str>,
    posts: Vec<Option<Uuid>>,
    authors: Vec<Option<Uuid>>,
    notifications: Vec<Option<Uuid>>,
    recipients: Vec<Option<Uuid>>,
}

impl Rows {
    fn push(&mut self, offset: i64, push: &Push) {
        let (kind, post, author, notification, recipient) = match *push {
            Push::Post { post, author } => ("post", Some(post), Some(author), None, None),
            Push::PostDeleted { post, author } => {
                ("post_deleted", Some(post), Some(author), None, None)
            }
            Push::Notification { id, recipient, .. } => {
                ("notification", None, None, Some(id), Some(recipient))
            }
        };
        self.offsets.push(offset);
        self.kinds.push(kind);
        self.posts.push(post);
        self.authors.push(author);
        self.notifications.push(notification);
        self.recipients.push(recipient);
    }
}

/// Those of `users` that are users.
async fn users_among(
    tx: &Transaction<'_>,
    schema: &str,
    users: &[Uuid],
) -> Result<Vec<Uuid>, Error> {
    Ok(query(
        tx,
        schema,
        "SELECT user_id FROM {s}.users WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect())
}
