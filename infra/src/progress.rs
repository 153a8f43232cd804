//! How far the projector has got, and waiting for it (read-your-writes).
//!
//! The projector stores, per partition, the offset of the next event it will apply, in the same
//! transaction as the rows that event produced, and announces every commit with
//! `NOTIFY chronicle_progress, '<topic>:<partition>:<next offset>'`. [`Progress`] listens on one
//! dedicated connection and keeps the latest offsets in a watch channel; requests that carry
//! `min_position` wait on that channel, so no request polls the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::Position;

/// The channel the projector notifies on after each committed batch.
pub const CHANNEL: &str = "chronicle_progress";

/// The table holding the projector's offsets (written only by the projector).
pub const OFFSETS_TABLE: &str = "projection.offsets";

/// The payload of a progress notification.
pub fn notification_payload(topic: &str, partition: i32, next_offset: i64) -> String {
    format!("{topic}:{partition}:{next_offset}")
}

type Offsets = HashMap<i32, i64>;

/// A live view of the projector's stored offsets for one topic.
#[derive(Clone)]
pub struct Progress {
    offsets: watch::Receiver<Arc<Offsets>>,
}

impl Progress {
    /// Starts following the projector's progress on `topic` in a background task that lives as
    /// long as the process, reconnecting when the database goes away.
    pub fn follow(config: tokio_postgres::Config, topic: String) -> Progress {
        let (sender, offsets) = watch::channel(Arc::new(Offsets::new()));
        tokio::spawn(listen_forever(config, topic, sender));
        Progress { offsets }
    }

    /// Whether every position has been applied to the read models.
    pub fn reached(&self, positions: &[Position]) -> bool {
        reached(&self.offsets.borrow(), positions)
    }

    /// Waits until every position has been applied, for at most `patience`.
    /// Returns `false` when the time ran out.
    pub async fn wait_for(&self, positions: &[Position], patience: Duration) -> bool {
        if positions.is_empty() {
            return true;
        }
        let mut offsets = self.offsets.clone();
        let waited = tokio::time::timeout(
            patience,
            offsets.wait_for(|current| reached(current, positions)),
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

async fn listen_forever(
    config: tokio_postgres::Config,
    topic: String,
    sender: watch::Sender<Arc<Offsets>>,
) {
    loop {
        if let Err(err) = listen(&config, &topic, &sender).await {
            tracing::warn!(error = %err, "lost the progress listener connection, reconnecting");
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reloading the whole table now and then is a safety net for notifications a broken
/// connection may have swallowed; notifications are what keeps waiting fast.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

async fn listen(
    config: &tokio_postgres::Config,
    topic: &str,
    sender: &watch::Sender<Arc<Offsets>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
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
                if let Some((partition, next)) = parse_payload(&payload, topic) {
                    sender.send_if_modified(|offsets| advance(offsets, partition, next));
                }
            }
            _ = reload.tick() => {
                // The table does not exist until the projector's first migration.
                let loaded = client
                    .query(
                        &format!("SELECT partition, next_offset FROM {OFFSETS_TABLE} WHERE topic = $1"),
                        &[&topic],
                    )
                    .await;
                match loaded {
                    Ok(rows) => {
                        sender.send_if_modified(|offsets| {
                            let mut changed = false;
                            for row in &rows {
                                changed |= advance(offsets, row.get(0), row.get(1));
                            }
                            changed
                        });
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

fn advance(offsets: &mut Arc<Offsets>, partition: i32, next: i64) -> bool {
    if offsets.get(&partition).is_some_and(|known| *known >= next) {
        return false;
    }
    Arc::make_mut(offsets).insert(partition, next);
    true
}

fn parse_payload(payload: &str, topic: &str) -> Option<(i32, i64)> {
    let (rest, next) = payload.rsplit_once(':')?;
    let (note_topic, partition) = rest.rsplit_once(':')?;
    if note_topic != topic {
        return None;
    }
    Some((partition.parse().ok()?, next.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_even_with_colons_in_the_topic() {
        let payload = notification_payload("a:b.events", 3, 42);
        assert_eq!(parse_payload(&payload, "a:b.events"), Some((3, 42)));
        assert_eq!(parse_payload(&payload, "other"), None);
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
        let mut offsets = Arc::new(Offsets::new());
        assert!(advance(&mut offsets, 0, 5));
        assert!(!advance(&mut offsets, 0, 3));
        assert_eq!(offsets.get(&0), Some(&5));
    }
}
