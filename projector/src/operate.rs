//! The operator's subcommands: `projector status` and `projector dead-letters ...`.
//!
//! They print for people, one fact per line or a small table, and exit non-zero with a message
//! when what was asked cannot be done.

use std::time::Duration;

use anyhow::{Context, bail};
use chronicle_events::Envelope;
use chronicle_infra::kafka::KafkaArgs;
use chronicle_infra::progress::{CHANNEL, notification_payload};
use deadpool_postgres::Pool;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::batch::{Once, apply_once};
use crate::generation;
use crate::projection::CounterDeltas;

/// What `projector status` reports: per partition, the stored offset, the broker's high
/// watermark and the lag; the dead letters awaiting a decision; the generations.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) topic: String,
    pub(crate) partitions: Vec<PartitionStatus>,
    /// The sum of the partitions' lags.
    pub(crate) total_lag: i64,
    pub(crate) dead_letters: DeadLetterCounts,
    pub(crate) generations: Vec<GenerationStatus>,
}

/// One partition of [`Status`].
#[derive(Debug, Serialize)]
pub(crate) struct PartitionStatus {
    pub(crate) partition: i32,
    /// The next offset the active generation will apply (0 before the first event).
    pub(crate) stored_offset: i64,
    pub(crate) high_watermark: i64,
    /// Events in the log the active generation has not applied yet.
    pub(crate) lag: i64,
}

/// The dead letters of the active generation.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetterCounts {
    /// Awaiting a decision (`projector dead-letters retry|skip`).
    pub(crate) open: i64,
    /// Recorded in all, resolved or not.
    pub(crate) recorded: i64,
}

/// One generation of [`Status`].
#[derive(Debug, Serialize)]
pub(crate) struct GenerationStatus {
    pub(crate) name: String,
    pub(crate) schema: String,
    pub(crate) state: String,
    pub(crate) code_version: i32,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
}

/// `projector status [--json]`: the [`Status`], as a table for people or as one JSON object for
/// programs (scripts waiting for the projector read `total_lag` and `dead_letters.open`).
pub async fn print_status(kafka: &KafkaArgs, pool: &Pool, json: bool) -> anyhow::Result<()> {
    let status = status(kafka, pool).await?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    println!(
        "topic {} ({} partitions)",
        status.topic,
        status.partitions.len()
    );
    println!(
        "{:>9} {:>14} {:>14} {:>10}",
        "partition", "stored offset", "high watermark", "lag"
    );
    for p in &status.partitions {
        println!(
            "{:>9} {:>14} {:>14} {:>10}",
            p.partition, p.stored_offset, p.high_watermark, p.lag
        );
    }
    println!(
        "{:>9} {:>14} {:>14} {:>10}",
        "total", "", "", status.total_lag
    );
    println!(
        "dead letters: {} awaiting a decision ({} recorded in all)",
        status.dead_letters.open, status.dead_letters.recorded
    );
    for g in &status.generations {
        println!(
            "generation {} ({}): {}, projection code v{}, created {}",
            g.name,
            g.schema,
            g.state,
            g.code_version,
            g.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

/// Gathers the [`Status`] from PostgreSQL and the broker.
pub(crate) async fn status(kafka: &KafkaArgs, pool: &Pool) -> anyhow::Result<Status> {
    let client = pool.get().await.context("cannot reach the database")?;
    let active = generation::active(&client).await?;
    let stored: std::collections::HashMap<i32, i64> = client
        .query(
            "SELECT partition, next_offset FROM projection.offsets
             WHERE generation = $2 AND topic = $1",
            &[&kafka.topic, &active],
        )
        .await
        .context("cannot read the stored offsets (has the projector run here yet?)")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let args = kafka.clone();
    let (topic, highs) = tokio::task::spawn_blocking(move || high_watermarks(&args)).await??;
    let partitions: Vec<PartitionStatus> = highs
        .into_iter()
        .map(|(partition, high_watermark)| {
            let stored_offset = stored.get(&partition).copied().unwrap_or(0);
            PartitionStatus {
                partition,
                stored_offset,
                high_watermark,
                lag: (high_watermark - stored_offset).max(0),
            }
        })
        .collect();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE resolved_at IS NULL), count(*)
             FROM projection.dead_letters WHERE generation = $1",
            &[&active],
        )
        .await?;
    let generations = generation::list(&client)
        .await?
        .into_iter()
        .map(|g| GenerationStatus {
            schema: generation::schema_of(&g.name),
            name: g.name,
            state: g.state,
            code_version: g.code_version,
            created_at: g.created_at,
        })
        .collect();
    Ok(Status {
        topic,
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        dead_letters: DeadLetterCounts {
            open: row.get(0),
            recorded: row.get(1),
        },
        generations,
    })
}

fn high_watermarks(kafka: &KafkaArgs) -> anyhow::Result<(String, Vec<(i32, i64)>)> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "chronicle-status")
        .create()
        .context("failed to create the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), timeout)
        .with_context(|| format!("the broker at {} did not answer", kafka.brokers))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == kafka.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    let mut highs = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (_, high) = consumer.fetch_watermarks(&kafka.topic, partition, timeout)?;
        highs.push((partition, high));
    }
    Ok((kafka.topic.clone(), highs))
}

/// `projector dead-letters list`: the dead letters, oldest first.
pub async fn list_dead_letters(pool: &Pool, all: bool) -> anyhow::Result<()> {
    let client = pool.get().await.context("cannot reach the database")?;
    let active = generation::active(&client).await?;
    let rows = client
        .query(
            "SELECT id, partition, \"offset\", coalesce(key, ''), recorded_at, error,
                    coalesce(resolution,
                             CASE WHEN EXISTS (
                                 SELECT 1 FROM projection.dead_letters e
                                 WHERE e.generation = d.generation AND e.topic = d.topic
                                   AND e.partition = d.partition AND e.key = d.key
                                   AND e.\"offset\" < d.\"offset\" AND e.resolved_at IS NULL
                             ) THEN 'held' ELSE 'open' END)
             FROM projection.dead_letters d
             WHERE generation = $2 AND ($1 OR resolved_at IS NULL)
             ORDER BY id",
            &[&all, &active],
        )
        .await?;
    if rows.is_empty() {
        println!(
            "no dead letters{}",
            if all { "" } else { " awaiting a decision" }
        );
        return Ok(());
    }
    for row in rows {
        let id: i64 = row.get(0);
        let partition: i32 = row.get(1);
        let offset: i64 = row.get(2);
        let key: String = row.get(3);
        let at: chrono::DateTime<chrono::Utc> = row.get(4);
        let error: String = row.get(5);
        let state: String = row.get(6);
        println!(
            "#{id} [{state}] partition {partition} offset {offset} key {key:?} at {}\n    {error}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    Ok(())
}

/// `projector dead-letters retry <id>`: decodes the event again, through the current upcasters,
/// and applies it; the dead letter is marked retried, and the events of its key held behind it
/// are released. Fails, and changes nothing, if it still cannot be decoded or applied.
pub async fn retry_dead_letter(pool: &Pool, topic: &str, id: i64) -> anyhow::Result<()> {
    decide(pool, topic, id, Decision::Retry).await
}

/// `projector dead-letters skip <id>`: marks the dead letter as deliberately not applied, and
/// releases the events of its key held behind it.
pub async fn skip_dead_letter(pool: &Pool, topic: &str, id: i64) -> anyhow::Result<()> {
    decide(pool, topic, id, Decision::Skip).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Retry,
    Skip,
}

/// A dead letter as stored.
struct DeadLetter {
    id: i64,
    payload: Option<Vec<u8>>,
}

impl DeadLetter {
    /// The event, decoded, with its sealed fields opened.
    async fn open(&self, tx: &deadpool_postgres::Transaction<'_>) -> anyhow::Result<Envelope> {
        let mut envelope = Envelope::from_json(self.payload.as_deref().unwrap_or_default())?;
        let keys = crate::keys::for_envelopes(tx, std::iter::once(&envelope)).await?;
        crate::keys::open(&mut envelope, &keys).map_err(anyhow::Error::msg)?;
        Ok(envelope)
    }
}

/// Resolves dead letter `id` as `decision` says, then applies, in log order, the events of its
/// key that were held behind it, until one of them fails again: that one stays, as the first
/// of its key, with its new error.
async fn decide(pool: &Pool, topic: &str, id: i64, decision: Decision) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot reach the database")?;
    let mut tx = client.transaction().await?;
    // Holding the active generation (FOR SHARE) keeps a switch from happening meanwhile.
    let (active, version) = generation::active_held(&tx)
        .await?
        .context("there is no active generation")?;
    let layout = generation::Layout::of_active(&active, version).map_err(anyhow::Error::msg)?;
    let schema = generation::schema_of(&active);
    // Alone, as an erasure is: what it releases may erase, or be by someone erased meanwhile.
    crate::projection::hold_erasure_lock(&tx, &schema, true).await?;
    let Some(row) = tx
        .query_opt(
            "SELECT partition, key, resolved_at IS NOT NULL
             FROM projection.dead_letters WHERE id = $1 AND generation = $2",
            &[&id, &active],
        )
        .await?
    else {
        bail!("there is no dead letter #{id} in the active generation {active}");
    };
    let (partition, key, resolved): (i32, Option<String>, bool) =
        (row.get(0), row.get(1), row.get(2));
    if resolved {
        bail!("dead letter #{id} is already resolved");
    }
    // The partition's offset row is what every batch of the live projector updates first: with
    // it locked, no batch can park another event of this key while we release them.
    tx.execute(
        "SELECT 1 FROM projection.offsets
         WHERE generation = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
        &[&active, &topic, &partition],
    )
    .await?;
    // The open dead letters of its key, in log order (a keyless one holds nothing back): this
    // one must come first.
    let queue: Vec<DeadLetter> = tx
        .query(
            "SELECT id, payload FROM projection.dead_letters
             WHERE generation = $1 AND topic = $2 AND partition = $3 AND resolved_at IS NULL
               AND (id = $5 OR key = $4)
             ORDER BY \"offset\"",
            &[&active, &topic, &partition, &key, &id],
        )
        .await?
        .iter()
        .map(|row| DeadLetter {
            id: row.get(0),
            payload: row.get(1),
        })
        .collect();
    if let Some(first) = queue.first().filter(|first| first.id != id) {
        bail!(
            "dead letter #{id} is held behind dead letter #{} of the same key; retry or skip that one first",
            first.id
        );
    }

    let mut deltas = CounterDeltas::default();
    let mut queue = queue.into_iter();
    if let Some(head) = queue.next() {
        match decision {
            Decision::Skip => {
                resolve(&tx, head.id, "skipped").await?;
                println!("dead letter #{id} skipped");
            }
            Decision::Retry => {
                let envelope = head
                    .open(&tx)
                    .await
                    .with_context(|| format!("dead letter #{id} still cannot be decoded"))?;
                let once = apply_once(&mut tx, &schema, layout, &envelope, &mut deltas)
                    .await
                    .with_context(|| format!("dead letter #{id} still cannot be applied"))?;
                resolve(&tx, head.id, "retried").await?;
                println!(
                    "dead letter #{id} retried: {} {} {}",
                    envelope.kind().name(),
                    envelope.event_id,
                    describe(&once)
                );
            }
        }
    }
    for held in queue {
        let applied = match held.open(&tx).await {
            Ok(envelope) => apply_once(&mut tx, &schema, layout, &envelope, &mut deltas)
                .await
                .map(|once| {
                    format!(
                        "{} {} {}",
                        envelope.kind().name(),
                        envelope.event_id,
                        describe(&once)
                    )
                })
                .map_err(|err| format!("could not apply: {err}")),
            Err(err) => Err(format!("{err:#}")),
        };
        match applied {
            Ok(what) => {
                resolve(&tx, held.id, "released").await?;
                println!("dead letter #{} released: {what}", held.id);
            }
            Err(error) => {
                tx.execute(
                    "UPDATE projection.dead_letters SET error = $2 WHERE id = $1",
                    &[&held.id, &error],
                )
                .await?;
                println!(
                    "dead letter #{} failed again and now holds back its key: {error}",
                    held.id
                );
                break;
            }
        }
    }
    // What these events would push to live streams is not written: their offsets are behind
    // what every stream has passed (see `projection::stream`).
    deltas.write(&tx, &schema, layout).await?;
    // Readers waiting on this partition re-check; the stored offset itself did not move.
    let stored: i64 = tx
        .query_opt(
            "SELECT next_offset FROM projection.offsets
             WHERE generation = $3 AND topic = $1 AND partition = $2",
            &[&topic, &partition, &active],
        )
        .await?
        .map_or(0, |row| row.get(0));
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &CHANNEL,
            &notification_payload(&active, topic, partition, stored),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn describe(once: &Once) -> &'static str {
    match once {
        Once::Applied => "applied",
        Once::SeenBefore => "was applied before; nothing to apply",
    }
}

async fn resolve(
    tx: &deadpool_postgres::Transaction<'_>,
    id: i64,
    resolution: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE projection.dead_letters SET resolved_at = now(), resolution = $2 WHERE id = $1",
        &[&id, &resolution],
    )
    .await?;
    Ok(())
}
