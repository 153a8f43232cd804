//! The hub: one task, on a thread of its own, that follows the projector and hands each new
//! message to the streams it belongs to.
//!
//! Whenever the projector's progress moves, the hub reads the `stream` rows between where it
//! was and where the projector now is (on a database connection of its own), renders each
//! message once, and offers it to every matching stream's queue. A queue is bounded: a stream whose queue is full is cut off (its
//! queue is dropped, so it ends once it has sent what it holds, and its client resumes from its
//! last id). No client can make the server hold more than its queue's messages for it.
//!
//! Registering a stream and handing out a round of messages take the same lock, and a round
//! ends by recording how far it got ([`Delivered`]): a stream that registers sees that place,
//! and gets every later message through its queue and every earlier one from the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chronicle_infra::db::PgConfig;
use chronicle_infra::progress::Progress;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::resume::Place;
use super::{About, Fetched, Message, Topic, fetch, stream_sql};

/// How far the hub has handed out messages.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    /// The schema read.
    pub(crate) schema: String,
    /// Every message before this place is in the queues of the streams registered then.
    pub(crate) place: Place,
}

/// The streams being served and how far the hub got.
#[derive(Default)]
struct Registry {
    next_key: u64,
    delivered: Option<Delivered>,
    streams: HashMap<u64, (Topic, mpsc::Sender<Arc<Message>>)>,
}

/// The live streams of one query API.
pub(crate) struct Hub {
    registry: Mutex<Registry>,
    /// Whether the first round has run (the hub knows where streams start).
    started: tokio::sync::watch::Sender<bool>,
    /// Whether the service is shutting down: every stream ends.
    closing: tokio::sync::watch::Sender<bool>,
    /// Messages one stream's queue holds at most.
    queue: usize,
}

/// A stream's place in the hub; dropping it unregisters the stream.
pub(crate) struct Registration {
    hub: Arc<Hub>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock().streams.remove(&self.key);
        metrics::gauge!("stream_clients").decrement(1);
    }
}

impl Hub {
    /// A hub whose streams' queues hold `queue` messages each.
    pub(crate) fn new(queue: usize) -> Hub {
        Hub {
            registry: Mutex::default(),
            started: tokio::sync::watch::Sender::new(false),
            closing: tokio::sync::watch::Sender::new(false),
            queue,
        }
    }

    /// Rows one round reads at most: one more than a queue holds, so that a round, less its
    /// last event (which a full round leaves for the next), never gives one stream more
    /// messages than its queue holds (an event gives a stream at most one, and has at most
    /// three rows). A longer backlog takes several rounds.
    fn round_rows(&self) -> i64 {
        self.queue as i64 + 1
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while the lock was held cannot leave the registry half-changed: every change
        // is one map operation.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a stream of `topic`: its queue, and the place from which the queue has every
    /// message (`None` while the hub has not started).
    pub(crate) fn register(
        self: &Arc<Self>,
        topic: Topic,
    ) -> Option<(Registration, mpsc::Receiver<Arc<Message>>, Delivered)> {
        let (sender, receiver) = mpsc::channel(self.queue);
        let mut registry = self.lock();
        let delivered = registry.delivered.clone()?;
        let key = registry.next_key;
        registry.next_key += 1;
        registry.streams.insert(key, (topic, sender));
        metrics::gauge!("stream_clients").increment(1);
        let registration = Registration {
            hub: Arc::clone(self),
            key,
        };
        Some((registration, receiver, delivered))
    }

    /// Waits until the hub knows where streams start (a query API that has just started).
    pub(crate) async fn wait_started(&self) {
        let mut started = self.started.subscribe();
        // The sender lives in `self`, so the wait ends only when it has started.
        let _ = started.wait_for(|started| *started).await;
    }

    /// Ends every stream: the service is shutting down.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Hub::close`] was called.
    pub(crate) async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// How far the hub got (`None` before it started).
    pub(crate) fn delivered(&self) -> Option<Delivered> {
        self.lock().delivered.clone()
    }

    /// Starts following the projector on a thread of its own, for as long as the process
    /// lives: serving many streams' clients keeps the service's threads busy, and the next
    /// round must not wait behind them (measured: with 1,000 streams, a round on the shared
    /// threads took 36 ms at the median, 8 of them reading).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        config: PgConfig,
        progress: Progress,
    ) -> anyhow::Result<()> {
        let hub = Arc::clone(self);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("live-streams".to_owned())
            .spawn(move || runtime.block_on(hub.run(config.read_only(), progress)))?;
        Ok(())
    }

    /// Runs rounds on one connection of its own, reconnecting when it breaks.
    async fn run(self: Arc<Self>, config: PgConfig, mut progress: Progress) {
        let mut session: Option<(tokio_postgres::Client, Statements)> = None;
        loop {
            let (client, mut statements) = match session
                .take()
                .filter(|(client, _)| !client.is_closed())
            {
                Some(session) => session,
                None => match config.connect().await {
                    Ok((client, connection)) => {
                        tokio::spawn(async move {
                            if let Err(err) = connection.await {
                                tracing::warn!(error = %err, "live streams lost their database connection");
                            }
                        });
                        (client, Statements::default())
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "live streams cannot connect to the database; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            // A panic is a bug; it must not stop every stream of the process for good.
            let round =
                std::panic::AssertUnwindSafe(self.round(&client, &mut statements, &progress));
            let started = std::time::Instant::now();
            let outcome = round.catch_unwind().await;
            metrics::histogram!("stream_round_seconds").record(started.elapsed().as_secs_f64());
            session = Some((client, statements));
            let more = match outcome {
                Ok(Ok(more)) => more,
                Ok(Err(err)) => {
                    tracing::warn!(error = %format!("{err:#}"), "live streams could not read what to send; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    true
                }
                Err(_) => {
                    tracing::error!("a round of live streams panicked; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    true
                }
            };
            if !more {
                progress.changed().await;
            }
        }
    }

    /// Hands out what the projector applied since the last round; whether there is more.
    async fn round(
        &self,
        client: &tokio_postgres::Client,
        statements: &mut Statements,
        progress: &Progress,
    ) -> anyhow::Result<bool> {
        let Some((schema, offsets)) = progress.snapshot() else {
            return Ok(false);
        };
        let until = Place::new(offsets);
        let from = {
            let mut registry = self.lock();
            match &registry.delivered {
                Some(delivered) => delivered.place.clone(),
                None => {
                    // The first round: streams start from where the projector is now.
                    registry.delivered = Some(Delivered {
                        schema,
                        place: until,
                    });
                    self.started.send_replace(true);
                    return Ok(false);
                }
            }
        };
        let gaps = from.gaps(&until);
        if gaps.is_empty() {
            if let Some(delivered) = &mut self.lock().delivered {
                delivered.schema = schema;
            }
            return Ok(false);
        }
        let read = std::time::Instant::now();
        let (sql, _) = stream_sql(&schema, &Topic::All);
        let fetched = match statements.get(client, &sql).await {
            Ok(statement) => fetch(client, &statement, None, &gaps, self.round_rows()).await,
            Err(err) => Err(err),
        };
        metrics::histogram!("stream_round_read_seconds").record(read.elapsed().as_secs_f64());
        if let Err(err) = &fetched
            && err.code() == Some(&SqlState::UNDEFINED_TABLE)
        {
            // A generation built before streams (projection version 1, until `projector
            // rebuild`): nothing to stream; streams refuse to open meanwhile.
            if let Some(delivered) = &mut self.lock().delivered {
                *delivered = Delivered {
                    schema,
                    place: until,
                };
            }
            return Ok(false);
        }
        let Fetched {
            mut messages,
            rows,
            last,
        } = fetched?;
        // A full round may have cut an event's messages in two: leave its last event for the
        // next round.
        let full = rows as i64 >= self.round_rows();
        let mut place = until;
        if let Some((partition, offset)) = last
            && full
        {
            messages.retain(|m| (m.partition, m.offset) != (partition, offset));
            place = from;
            place.pass_page(&gaps, partition, offset - 1);
        }
        metrics::counter!("stream_messages_total").increment(messages.len() as u64);
        let messages: Vec<Arc<Message>> = messages.into_iter().map(Arc::new).collect();
        let authors: Vec<Uuid> = messages
            .iter()
            .filter_map(|m| match m.about {
                About::Post { author } => Some(author),
                About::Notification { .. } => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let delivered = Delivered { schema, place };
        let mut followers = None;
        // The round's followers are read only while some timeline is streamed; one may start
        // between a look and the hand-out.
        while !self.hand_out(&messages, followers.as_ref(), &delivered) {
            followers =
                Some(Followers::read(client, statements, &delivered.schema, &authors).await?);
        }
        Ok(full)
    }

    /// Offers each message to the queue of every stream it belongs to, cutting off the streams
    /// whose queue is full, then records `delivered`; whether it did. It does not when a
    /// timeline is streamed, there are posts, and `followers` were not read.
    fn hand_out(
        &self,
        messages: &[Arc<Message>],
        followers: Option<&Followers>,
        delivered: &Delivered,
    ) -> bool {
        let mut registry = self.lock();
        let empty = Followers::default();
        let followers = match followers {
            Some(followers) => followers,
            None if messages
                .iter()
                .any(|m| matches!(m.about, About::Post { .. }))
                && registry
                    .streams
                    .values()
                    .any(|(topic, _)| matches!(topic, Topic::Timeline(_))) =>
            {
                return false;
            }
            None => &empty,
        };
        let mut cut = Vec::new();
        for (key, (topic, queue)) in &registry.streams {
            for message in messages {
                let wanted = match (topic, message.about) {
                    (Topic::Feed, About::Post { .. }) => true,
                    (Topic::Timeline(user), About::Post { author }) => {
                        *user == author || followers.0.contains(&(*user, author))
                    }
                    (Topic::Notifications(user), About::Notification { recipient }) => {
                        *user == recipient
                    }
                    _ => false,
                };
                if wanted && queue.try_send(Arc::clone(message)).is_err() {
                    cut.push(*key);
                    break;
                }
            }
        }
        for key in cut {
            registry.streams.remove(&key);
            metrics::counter!("stream_clients_cut_total").increment(1);
            tracing::info!("cut off a live stream whose client did not keep up");
        }
        registry.delivered = Some(delivered.clone());
        true
    }
}

/// Who follows the authors of a round's posts: (follower, author).
#[derive(Default)]
struct Followers(HashSet<(Uuid, Uuid)>);

impl Followers {
    /// Every follower of `authors`, from the leading column of `follows_by_followee`, a plan
    /// no statistics can change. Asking the database for the streamed timelines among them
    /// instead (a join to an array of them) let the planner drive from that array: measured
    /// with 594 timelines streamed, 2,124 buffers and 9.5 ms a round, against about 4 buffers
    /// an author. The rows grow with the authors' followers: an author followed by millions
    /// would call for fanning posts out to timelines as they are written.
    async fn read(
        client: &tokio_postgres::Client,
        statements: &mut Statements,
        schema: &str,
        authors: &[Uuid],
    ) -> Result<Followers, tokio_postgres::Error> {
        let sql = format!(
            "SELECT follower_id, followee_id FROM {schema}.follows WHERE followee_id = ANY($1)"
        );
        let statement = statements.get(client, &sql).await?;
        let rows = client.query(&statement, &[&authors]).await?;
        Ok(Followers(
            rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
        ))
    }
}

/// The statements prepared on the hub's connection, by their text.
#[derive(Default)]
struct Statements(HashMap<String, Statement>);

impl Statements {
    async fn get(
        &mut self,
        client: &tokio_postgres::Client,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql).await?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}
