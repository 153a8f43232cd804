//! The projector's Kafka side: a consumer-group member that starts each partition it is given at
//! the offset stored in Postgres, and routes messages to one worker per partition.
//!
//! PostgreSQL holds the offsets that count: on assignment, the rebalance callback ([`rebalance`])
//! reads the stored offsets and assigns the partitions at them, under either group protocol
//! (`CHRONICLE_KAFKA_GROUP_PROTOCOL`). On revocation, the partitions' workers lose their inboxes;
//! a batch a worker is still applying is kept from doing harm by the fence in [`crate::batch`].
//!
//! The live projector also reports each applied offset to Kafka, after the PostgreSQL commit that
//! stored it (librdkafka commits the latest every second, and on revocation and close), so that
//! Kafka's own tools and lag monitors see the group's real lag. Those committed offsets are
//! advisory: nothing reads them back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::GroupProtocol;
use crate::batch::{BatchError, Outcome, Partition, Record};
use crate::generation::Target;

mod rebalance;

pub(crate) use rebalance::Rebalancer;

/// The consumer type the projector uses.
pub(crate) type EventConsumer = StreamConsumer<Rebalancer>;

/// Settings of the consuming side.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeSettings {
    pub(crate) group: String,
    pub(crate) batch_size: usize,
    /// librdkafka's `fetch.wait.max.ms`.
    pub(crate) fetch_wait_ms: u32,
    /// The consumer group protocol.
    pub(crate) group_protocol: GroupProtocol,
    /// The generation to project into.
    pub(crate) target: Target,
}

/// Creates the consumer and joins the group.
pub(crate) fn subscribe(
    kafka: &chronicle_infra::kafka::KafkaArgs,
    settings: &ConsumeSettings,
    pool: Pool,
) -> anyhow::Result<Arc<EventConsumer>> {
    let consumer = create(kafka, settings, pool, HashSet::new())?;
    consumer
        .subscribe(&[&kafka.topic])
        .context("failed to subscribe to the events topic")?;
    Ok(Arc::new(consumer))
}

/// Creates a consumer outside any group that owns every partition of the topic from the given
/// offsets on (a rebuild).
pub(crate) fn assign_all(
    kafka: &chronicle_infra::kafka::KafkaArgs,
    settings: &ConsumeSettings,
    pool: Pool,
    start: &HashMap<i32, i64>,
) -> anyhow::Result<Arc<EventConsumer>> {
    let consumer = create(kafka, settings, pool, start.keys().copied().collect())?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in start {
        assignment.add_partition_offset(&kafka.topic, *partition, Offset::Offset(*offset))?;
    }
    consumer
        .assign(&assignment)
        .context("failed to assign the topic's partitions")?;
    Ok(Arc::new(consumer))
}

fn create(
    kafka: &chronicle_infra::kafka::KafkaArgs,
    settings: &ConsumeSettings,
    pool: Pool,
    owned: HashSet<i32>,
) -> anyhow::Result<EventConsumer> {
    // Only the live projector reports its offsets to the group; a rebuild's are not its lag.
    let report_offsets = settings.target == Target::Active;
    let context = Rebalancer::new(pool, kafka.topic.clone(), settings.target.clone(), owned);
    let mut config = kafka.client_config();
    config
        .set("group.id", &settings.group)
        .set("group.protocol", settings.group_protocol.as_str())
        // Offsets are stored by hand after each PostgreSQL commit (see `report_applied`) and
        // committed to Kafka in the background: advisory, for Kafka's tools.
        .set("enable.auto.commit", report_offsets.to_string())
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // How long the broker may hold a fetch that found nothing new; it answers as soon as
        // data arrives, so this only sets how often an idle projector asks.
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("statistics.interval.ms", "5000");
    // How much librdkafka fetches ahead of the workers. Its defaults (64 MiB of queued
    // messages, 50 MiB per fetch) took the projector to 128 MiB of RSS while it caught up with
    // a long log; a few MiB keep every partition's workers fed (a batch is at most 500 events
    // of well under 1 KiB). Operators may set other values through CHRONICLE_KAFKA_*.
    for (key, value) in [
        ("queued.max.messages.kbytes", "8192"),
        ("fetch.max.bytes", "4194304"),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    if settings.group_protocol == GroupProtocol::Classic {
        // A killed projector's partitions move on after 6 s. The consumer protocol has no such
        // client settings (librdkafka rejects them): the broker's group.consumer.* decide.
        config
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000");
    }
    config
        .create_with_context(context)
        .context("failed to create the Kafka consumer")
}

/// Routes messages to per-partition workers until `shutdown` resolves, then lets the workers
/// finish what they hold.
pub(crate) async fn consume(
    consumer: Arc<EventConsumer>,
    pool: Pool,
    topic: String,
    settings: ConsumeSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut inboxes: HashMap<i32, mpsc::Sender<Record>> = HashMap::new();
    let mut workers = JoinSet::new();
    let applied = Arc::new(AtomicU64::new(0));
    let statistics = tokio::spawn(keep_statistics_fresh(
        pool.clone(),
        settings.target.clone(),
        Arc::clone(&applied),
    ));
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "consumer error");
                metrics::counter!("projector_consumer_errors_total").increment(1);
                continue;
            }
        };
        let partition = message.partition();
        if !consumer.context().owns(partition) {
            inboxes.remove(&partition);
            continue;
        }
        let record = Record {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        };
        drop(message);
        let inbox = inboxes.entry(partition).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(settings.batch_size * 2);
            workers.spawn(work(
                Arc::clone(&consumer),
                pool.clone(),
                topic.clone(),
                partition,
                settings.clone(),
                Arc::clone(&applied),
                receiver,
            ));
            sender
        });
        if inbox.send(record).await.is_err() {
            inboxes.remove(&partition);
        }
        // Workers whose partition was revoked end once their inbox is dropped and drained.
        inboxes.retain(|partition, _| consumer.context().owns(*partition));
        while workers.try_join_next().is_some() {}
    }
    drop(inboxes);
    while workers.join_next().await.is_some() {}
    statistics.abort();
}

/// Events applied between two `ANALYZE`s of the generation's tables.
const ANALYZE_AFTER: u64 = 20_000;

/// Re-analyzes the target generation's tables as they grow. Autovacuum does this too, where it
/// runs; where it does not (or lags behind a rebuild), the planner would keep planning for the
/// empty tables the prepared statements first met, and every event would get slower.
async fn keep_statistics_fresh(pool: Pool, target: Target, applied: Arc<AtomicU64>) {
    let mut since = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        since += applied.swap(0, Ordering::Relaxed);
        if since < ANALYZE_AFTER {
            continue;
        }
        match crate::generation::analyze(&pool, &target).await {
            Ok(()) => since = 0,
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "ANALYZE failed"),
        }
    }
}

/// One partition's worker: takes what has arrived (up to `batch_size`) and applies it as one
/// batch, again and again.
async fn work(
    consumer: Arc<EventConsumer>,
    pool: Pool,
    topic: String,
    partition: i32,
    settings: ConsumeSettings,
    applied_total: Arc<AtomicU64>,
    mut inbox: mpsc::Receiver<Record>,
) {
    let batch_size = settings.batch_size;
    let part = Partition {
        topic: &topic,
        partition,
        target: &settings.target,
    };
    let mut expected = retry(partition, || part.stored_offset(&pool)).await;
    consumer.context().note_applied(partition, expected);
    tracing::info!(partition, offset = expected, "projecting partition");
    let mut batch: Vec<Record> = Vec::with_capacity(batch_size);
    let mut held: Vec<Record> = Vec::new();
    let mut gap_seen_at = None;
    loop {
        if held.is_empty() {
            if inbox.recv_many(&mut batch, batch_size).await == 0 {
                break;
            }
        } else {
            // A rebuild never gets ahead of the active generation: what lies beyond its
            // stored offset waits here until the live projector has applied it.
            batch.append(&mut held);
            while batch.len() < batch_size {
                match inbox.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        if matches!(settings.target, Target::Building(_)) {
            let bound = retry(partition, || part.active_offset(&pool)).await;
            if let Some(at) = batch.iter().position(|r| r.offset >= bound) {
                held = batch.split_off(at);
            }
            if batch.is_empty() {
                if inbox.is_closed() && inbox.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let started = Instant::now();
        // Offsets in our topic are contiguous, so a batch that does not start at the stored
        // offset holds messages read ahead before a seek. Seek back once; if the same gap comes
        // back, the log really has a hole there (compaction, transaction markers): accept it.
        let first = batch
            .iter()
            .map(|r| r.offset)
            .filter(|o| *o >= expected)
            .min();
        if let Some(first) = first.filter(|first| *first > expected && gap_seen_at != Some(*first))
        {
            tracing::warn!(
                partition,
                expected,
                first,
                "gap before the batch; seeking back"
            );
            gap_seen_at = Some(first);
            seek(&consumer, &topic, partition, expected).await;
            batch.clear();
            continue;
        }
        let mut careful = false;
        loop {
            match part.apply_batch(&pool, expected, &batch, careful).await {
                Ok(Outcome::Applied {
                    next,
                    applied,
                    dead,
                }) => {
                    expected = next;
                    consumer.context().note_applied(partition, next);
                    if settings.target == Target::Active {
                        report_applied(&consumer, &topic, partition, next);
                    }
                    metrics::counter!("projector_events_applied_total").increment(applied as u64);
                    applied_total.fetch_add(applied as u64, Ordering::Relaxed);
                    metrics::counter!("projector_dead_letters_total").increment(dead as u64);
                    metrics::histogram!("projector_batch_size").record(batch.len() as f64);
                    metrics::histogram!("projector_batch_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    break;
                }
                Ok(Outcome::Fenced { stored }) => {
                    tracing::warn!(
                        partition,
                        expected,
                        stored,
                        "another owner moved this partition; resuming from its offset"
                    );
                    expected = stored;
                    seek(&consumer, &topic, partition, stored).await;
                    break;
                }
                Err(BatchError::Poisoned(err)) if !careful => {
                    tracing::warn!(partition, error = %err, "a batch failed; retrying event by event");
                    careful = true;
                }
                Err(err) => {
                    tracing::warn!(partition, error = %err, "batch not applied; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        batch.clear();
    }
    tracing::info!(partition, "stopped projecting partition");
}

/// Tells Kafka that the group has applied `partition` up to `next` (advisory: committed in the
/// background, for Kafka's tools and lag monitors; PostgreSQL holds the offsets that count).
fn report_applied(consumer: &EventConsumer, topic: &str, partition: i32, next: i64) {
    let mut offsets = TopicPartitionList::new();
    let stored = offsets
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .and_then(|()| consumer.store_offsets(&offsets));
    // Refused for a partition this member no longer owns, which the next owner reports.
    if let Err(err) = stored {
        tracing::debug!(partition, error = %err, "applied offset not reported to Kafka");
    }
}

async fn retry<F, Fut>(partition: i32, mut attempt: F) -> i64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, BatchError>>,
{
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => {
                tracing::warn!(partition, error = %err, "cannot read the stored offset; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn seek(consumer: &Arc<EventConsumer>, topic: &str, partition: i32, offset: i64) {
    let consumer = Arc::clone(consumer);
    let topic = topic.to_owned();
    let sought = tokio::task::spawn_blocking(move || {
        consumer.seek(
            &topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        )
    })
    .await;
    match sought {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(partition, error = %err, "seek failed"),
        Err(err) => tracing::warn!(partition, error = %err, "seek task failed"),
    }
}
