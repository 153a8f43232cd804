//! How far the projector has got, and waiting for it (read-your-writes).
//!
//! The projector stores, per generation and partition, the offset of the next event it will
//! apply, in the same transaction as the rows that event produced, and announces every commit with
//! `NOTIFY chronicle_progress, '<generation>:<topic>:<partition>:<next offset>'`, and a switch of
//! generations with `'activate:<generation>'`. [`Progress`] listens on one dedicated connection
//! and keeps the active generation and its offsets in a watch channel; requests that carry
//! `min_position` wait on that channel, so no request polls the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use crate::Position;
use crate::db::PgConfig;

/// The channel the projector notifies on after each committed batch.
pub const CHANNEL: &str = "chronicle_progress";

/// The payload of a progress notification: generation, topic, partition, next offset.
pub fn notification_payload(
    generation: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> String {
    format!("{generation}:{topic}:{partition}:{next_offset}")
}

/// The payload announcing that `generation` became the active one.
pub fn activation_payload(generation: &str) -> String {
    format!("activate:{generation}")
}

/// The schema holding the read models of `generation`.
pub fn read_schema(generation: &str) -> String {
    format!("read_{generation}")
}

type Offsets = HashMap<i32, i64>;

/// What the projector has done, as last heard: the active generation and its offsets.
#[derive(Debug, Clone, Default)]
struct View {
    generation: Option<Arc<str>>,
    offsets: Offsets,
}

/// A live view of the active generation and the projector's stored offsets for one topic.
#[derive(Clone)]
pub struct Progress {
    view: watch::Receiver<Arc<View>>,
}

impl Progress {
    /// Starts following the projector's progress on `topic` in a background task that lives as
    /// long as the process, reconnecting when the database goes away.
    pub fn follow(config: PgConfig, topic: String) -> Progress {
        let (sender, view) = watch::channel(Arc::new(View::default()));
        tokio::spawn(listen_forever(config, topic, sender));
        Progress { view }
    }

    /// The schema of the active generation's read models, once known. Take it once per request,
    /// so that a request never mixes generations.
    pub fn read_schema(&self) -> Option<String> {
        self.view.borrow().generation.as_deref().map(read_schema)
    }

    /// Like [`Progress::read_schema`], for a request: 503 `database_unavailable` until the
    /// projector has set up the read models.
    pub fn require_read_schema(&self) -> Result<String, crate::Problem> {
        self.read_schema().ok_or_else(|| {
            crate::Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the read models are not ready yet",
            )
            .with_retry_after(Duration::from_secs(1))
        })
    }

    /// The schema of the active generation's read models and the next offset of each partition
    /// applied to them, as last heard (`None` until known).
    pub fn snapshot(&self) -> Option<(String, HashMap<i32, i64>)> {
        let view = self.view.borrow();
        let generation = view.generation.as_deref()?;
        Some((read_schema(generation), view.offsets.clone()))
    }

    /// Waits until what [`Progress::snapshot`] says may have changed since this handle last
    /// looked.
    pub async fn changed(&mut self) {
        if self.view.changed().await.is_err() {
            // The listener lives as long as the process; should it be gone, nothing changes.
            std::future::pending::<()>().await;
        }
    }

    /// Whether every position has been applied to the active generation's read models.
    pub fn reached(&self, positions: &[Position]) -> bool {
        reached(&self.view.borrow().offsets, positions)
    }

    /// Waits until every position has been applied, for at most `patience`.
    /// Returns `false` when the time ran out.
    pub async fn wait_for(&self, positions: &[Position], patience: Duration) -> bool {
        if positions.is_empty() {
            return true;
        }
        let mut view = self.view.clone();
        let waited = tokio::time::timeout(
            patience,
            view.wait_for(|current| reached(&current.offsets, positions)),
        )
        .await;
        matches!(waited, Ok(Ok(_)))
    }
}

fn reached(offsets: &Offsets, positions: &[Position]) -> bool {
    positions.iter().all(|position| {
        offsets
            .get(&position.partition)
            .is_some_and(|next| *next > position.offset)
    })
}

async fn listen_forever(config: PgConfig, topic: String, sender: watch::Sender<Arc<View>>) {
    loop {
        if let Err(err) = listen(&config, &topic, &sender).await {
            tracing::warn!(
                error = %crate::db::error_chain(&err),
                "lost the progress listener connection, reconnecting"
            );
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reloading the whole view now and then is a safety net for notifications a broken
/// connection may have swallowed; notifications are what keeps waiting fast.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// What a notification says.
#[derive(Debug, PartialEq, Eq)]
enum Note {
    /// A batch of `generation` committed: `partition`'s next offset is `next`.
    Progress {
        generation: String,
        partition: i32,
        next: i64,
    },
    /// Another generation became active.
    Activated,
}

async fn listen(
    config: &PgConfig,
    topic: &str,
    sender: &watch::Sender<Arc<View>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect().await?;
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    if notes_tx.send(note.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    loop {
        tokio::select! {
            note = notes.recv() => {
                let Some(payload) = note else { break };
                match parse_payload(&payload, topic) {
                    Some(Note::Progress { generation, partition, next }) => {
                        let current = sender.borrow().generation.clone();
                        if current.as_deref() == Some(generation.as_str()) {
                            sender.send_if_modified(|view| advance(view, partition, next));
                        } else {
                            reload.reset_immediately();
                        }
                    }
                    Some(Note::Activated) => reload.reset_immediately(),
                    None => {}
                }
            }
            _ = reload.tick() => {
                // The tables do not exist until the projector's first migration.
                let loaded = client
                    .query(
                        "SELECT g.name, o.partition, o.next_offset
                         FROM projection.generations g
                         LEFT JOIN projection.offsets o ON o.generation = g.name AND o.topic = $1
                         WHERE g.state = 'active'",
                        &[&topic],
                    )
                    .await;
                match loaded {
                    Ok(rows) => {
                        sender.send_if_modified(|view| replace(view, &rows));
                    }
                    Err(err) if err.code().is_some() => {
                        tracing::debug!(error = %err, "offsets not readable yet");
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        if sender.is_closed() {
            break;
        }
    }
    driver.abort();
    Ok(())
}

/// Takes in a reload: a new active generation replaces the view; the same one only advances it.
fn replace(view: &mut Arc<View>, rows: &[tokio_postgres::Row]) -> bool {
    let Some(generation) = rows.first().map(|row| row.get::<_, String>(0)) else {
        return false;
    };
    if view.generation.as_deref() != Some(generation.as_str()) {
        let offsets = rows
            .iter()
            .filter_map(|row| Some((row.get::<_, Option<i32>>(1)?, row.get::<_, Option<i64>>(2)?)))
            .collect();
        *view = Arc::new(View {
            generation: Some(generation.into()),
            offsets,
        });
        return true;
    }
    let mut changed = false;
    for row in rows {
        if let (Some(partition), Some(next)) = (row.get(1), row.get(2)) {
            changed |= advance(view, partition, next);
        }
    }
    changed
}

fn advance(view: &mut Arc<View>, partition: i32, next: i64) -> bool {
    if view
        .offsets
        .get(&partition)
        .is_some_and(|known| *known >= next)
    {
        return false;
    }
    Arc::make_mut(view).offsets.insert(partition, next);
    true
}

fn parse_payload(payload: &str, topic: &str) -> Option<Note> {
    let (head, rest) = payload.split_once(':')?;
    if head == "activate" {
        return Some(Note::Activated);
    }
    let (rest, next) = rest.rsplit_once(':')?;
    let (note_topic, partition) = rest.rsplit_once(':')?;
    if note_topic != topic {
        return None;
    }
    Some(Note::Progress {
        generation: head.to_owned(),
        partition: partition.parse().ok()?,
        next: next.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_even_with_colons_in_the_topic() {
        let payload = notification_payload("g2", "a:b.events", 3, 42);
        assert_eq!(
            parse_payload(&payload, "a:b.events"),
            Some(Note::Progress {
                generation: "g2".into(),
                partition: 3,
                next: 42
            })
        );
        assert_eq!(parse_payload(&payload, "other"), None);
        assert_eq!(
            parse_payload(&activation_payload("g3"), "a:b.events"),
            Some(Note::Activated)
        );
    }

    #[test]
    fn a_position_is_reached_once_the_next_offset_is_past_it() {
        let offsets = Offsets::from([(0, 10), (1, 0)]);
        let at = |partition, offset| Position { partition, offset };
        assert!(reached(&offsets, &[at(0, 9)]));
        assert!(!reached(&offsets, &[at(0, 10)]));
        assert!(!reached(&offsets, &[at(1, 0)]));
        assert!(!reached(&offsets, &[at(2, 0)]));
        assert!(!reached(&offsets, &[at(0, 1), at(1, 0)]));
    }

    #[test]
    fn offsets_never_go_backwards() {
        let mut view = Arc::new(View::default());
        assert!(advance(&mut view, 0, 5));
        assert!(!advance(&mut view, 0, 3));
        assert_eq!(view.offsets.get(&0), Some(&5));
    }
}
