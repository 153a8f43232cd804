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

use crate::batch::first_sightings;
use crate::generation;
use crate::projection::{CounterDeltas, apply};

/// `projector status`: per partition, the stored offset, the broker's high watermark and the
/// lag; then the dead letters awaiting a decision.
pub async fn print_status(kafka: &KafkaArgs, pool: &Pool) -> anyhow::Result<()> {
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
    let kafka = kafka.clone();
    let watermarks = tokio::task::spawn_blocking(move || high_watermarks(&kafka)).await??;

    println!("topic {} ({} partitions)", watermarks.0, watermarks.1.len());
    println!(
        "{:>9} {:>14} {:>14} {:>10}",
        "partition", "stored offset", "high watermark", "lag"
    );
    let mut total_lag = 0;
    for (partition, high) in &watermarks.1 {
        let next = stored.get(partition).copied().unwrap_or(0);
        let lag = (high - next).max(0);
        total_lag += lag;
        println!("{partition:>9} {next:>14} {high:>14} {lag:>10}");
    }
    println!("{:>9} {:>14} {:>14} {total_lag:>10}", "total", "", "");
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE resolved_at IS NULL), count(*)
             FROM projection.dead_letters WHERE generation = $1",
            &[&active],
        )
        .await?;
    let (open, all): (i64, i64) = (row.get(0), row.get(1));
    println!("dead letters: {open} awaiting a decision ({all} recorded in all)");
    for generation in generation::list(&client).await? {
        println!(
            "generation {} ({}): {}, projection code v{}, created {}",
            generation.name,
            generation::schema_of(&generation.name),
            generation.state,
            generation.code_version,
            generation
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
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
                    coalesce(resolution, '')
             FROM projection.dead_letters
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
        let resolution: String = row.get(6);
        let state = if resolution.is_empty() {
            "open".to_owned()
        } else {
            resolution
        };
        println!(
            "#{id} [{state}] partition {partition} offset {offset} key {key:?} at {}\n    {error}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    Ok(())
}

/// `projector dead-letters retry <id>`: decodes the event again, through the current upcasters,
/// and applies it; the dead letter is marked retried. Fails, and changes nothing, if it still
/// cannot be decoded or applied.
pub async fn retry_dead_letter(pool: &Pool, topic: &str, id: i64) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot reach the database")?;
    let tx = client.transaction().await?;
    // Holding the active generation (FOR SHARE) keeps a switch from happening meanwhile.
    let active = generation::active_held(&tx)
        .await?
        .context("there is no active generation")?;
    let schema = generation::schema_of(&active);
    let Some(row) = tx
        .query_opt(
            "SELECT payload, resolved_at IS NOT NULL, partition
             FROM projection.dead_letters WHERE id = $1 AND generation = $2 FOR UPDATE",
            &[&id, &active],
        )
        .await?
    else {
        bail!("there is no dead letter #{id}");
    };
    if row.get::<_, bool>(1) {
        bail!("dead letter #{id} is already resolved");
    }
    let payload: Option<Vec<u8>> = row.get(0);
    let partition: i32 = row.get(2);
    let envelope = Envelope::from_json(payload.as_deref().unwrap_or_default())
        .with_context(|| format!("dead letter #{id} still cannot be decoded"))?;
    let fresh = first_sightings(&tx, &schema, &[envelope.event_id]).await?;
    if fresh.contains(&envelope.event_id) {
        let mut deltas = CounterDeltas::default();
        apply(&tx, &schema, &envelope, &mut deltas)
            .await
            .with_context(|| format!("dead letter #{id} still cannot be applied"))?;
        deltas.write(&tx, &schema).await?;
    } else {
        println!(
            "event {} was applied before; nothing to apply",
            envelope.event_id
        );
    }
    resolve(&tx, id, "retried").await?;
    // Readers waiting on this partition re-check; the stored offset itself did not move.
    let offset: i64 = tx
        .query_one(
            "SELECT next_offset FROM projection.offsets
             WHERE generation = $3 AND topic = $1 AND partition = $2",
            &[&topic, &partition, &active],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &CHANNEL,
            &notification_payload(&active, topic, partition, offset),
        ],
    )
    .await?;
    tx.commit().await?;
    println!(
        "dead letter #{id} retried: {} {} applied",
        envelope.kind().name(),
        envelope.event_id
    );
    Ok(())
}

/// `projector dead-letters skip <id>`: marks the dead letter as deliberately not applied.
pub async fn skip_dead_letter(pool: &Pool, id: i64) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("cannot reach the database")?;
    let tx = client.transaction().await?;
    let state: Option<bool> = tx
        .query_opt(
            "SELECT resolved_at IS NOT NULL FROM projection.dead_letters WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .map(|row| row.get(0));
    match state {
        None => bail!("there is no dead letter #{id}"),
        Some(true) => bail!("dead letter #{id} is already resolved"),
        Some(false) => {}
    }
    resolve(&tx, id, "skipped").await?;
    tx.commit().await?;
    println!("dead letter #{id} skipped");
    Ok(())
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
