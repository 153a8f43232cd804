//! The projector's Kafka side: a consumer-group member that starts each partition it is given at
//! the offset stored in Postgres, and routes messages to one worker per partition.
//!
//! Kafka's committed offsets are never read or written. On assignment, the rebalance callback
//! (synchronous, inside `recv()`) reads the stored offsets and assigns the partitions at them.
//! On revocation, the partitions' workers lose their inboxes; a batch a worker is still applying
//! is kept from doing harm by the fence in [`crate::batch`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::batch::{BatchError, Outcome, Partition, Record};
use crate::generation::Target;

/// The consumer type the projector uses.
pub(crate) type EventConsumer = StreamConsumer<Rebalancer>;

/// Rebalance handling with offsets from Postgres.
pub(crate) struct Rebalancer {
    pool: Pool,
    topic: String,
    target: Target,
    runtime: tokio::runtime::Handle,
    owned: Mutex<HashSet<i32>>,
    /// Per partition, the next offset applied so far (for the lag in `/metrics`).
    applied: Mutex<HashMap<i32, i64>>,
}

impl Rebalancer {
    fn owns(&self, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&partition)
    }

    fn stored_offsets(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
        let load = async {
            let mut offsets = HashMap::new();
            for partition in partitions {
                let stored = Partition {
                    topic: &self.topic,
                    partition: *partition,
                    target: &self.target,
                }
                .stored_offset(&self.pool)
                .await?;
                offsets.insert(*partition, stored);
            }
            Ok::<_, BatchError>(offsets)
        };
        Ok(tokio::task::block_in_place(|| self.runtime.block_on(load))?)
    }
}

impl Rebalancer {
    fn note_applied(&self, partition: i32, next: i64) {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, next);
    }
}

impl ClientContext for Rebalancer {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each partition's high
    /// watermark: the lag is how far behind it the applied offset is.
    fn stats(&self, statistics: rdkafka::Statistics) {
        // A rebuild's consumer is not the projector's lag.
        if self.target != Target::Active {
            return;
        }
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        for (partition, next) in applied.iter() {
            if !self.owns(*partition) {
                continue;
            }
            if let Some(stats) = topic.partitions.get(partition).filter(|p| p.hi_offset >= 0) {
                metrics::gauge!("projector_lag_events", "partition" => partition.to_string())
                    .set((stats.hi_offset - next).max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.stored_offsets(&numbers) {
                    Ok(stored) => {
                        for (partition, next) in &stored {
                            if let Err(err) = partitions.set_partition_offset(
                                &self.topic,
                                *partition,
                                Offset::Offset(*next),
                            ) {
                                tracing::error!(error = %err, partition, "cannot set start offset");
                            }
                        }
                    }
                    // Starting from the beginning is safe, only slower: workers skip every
                    // offset below the stored one.
                    Err(err) => tracing::warn!(
                        error = %format!("{err:#}"),
                        "cannot read stored offsets; starting assigned partitions from the beginning"
                    ),
                }
                self.owned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(numbers.iter().copied());
                tracing::info!(partitions = ?numbers, "partitions assigned");
                if let Err(err) = consumer.assign(partitions) {
                    tracing::error!(error = %err, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
                    for partition in &numbers {
                        owned.remove(partition);
                    }
                }
                tracing::info!(partitions = ?numbers, "partitions revoked");
                if let Err(err) = consumer.unassign() {
                    tracing::error!(error = %err, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                self.owned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                if let Err(err) = consumer.unassign() {
                    tracing::error!(error = %err, "unassign failed");
                }
            }
        }
    }
}

/// Settings of the consuming side.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeSettings {
    pub(crate) group: String,
    pub(crate) batch_size: usize,
    /// librdkafka's `fetch.wait.max.ms`.
    pub(crate) fetch_wait_ms: u32,
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
    let context = Rebalancer {
        pool,
        topic: kafka.topic.clone(),
        target: settings.target.clone(),
        runtime: tokio::runtime::Handle::current(),
        owned: Mutex::new(owned),
        applied: Mutex::new(HashMap::new()),
    };
    kafka
        .client_config()
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false")
        // How long the broker may hold a fetch that found nothing new. Kafka answers as soon as
        // data arrives, whatever this says; a broker that waits it out (tansu 0.6 does) adds
        // it to every event's way into the read models.
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .set("statistics.interval.ms", "5000")
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
