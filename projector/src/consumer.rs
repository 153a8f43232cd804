//! The projector's Kafka side: a consumer-group member that starts each partition it is given at
//! the offset stored in Postgres, and works on each partition independently of the others.
//!
//! PostgreSQL holds the offsets that count: on assignment, the rebalance callback ([`rebalance`])
//! reads the stored offsets and assigns the partitions at them, under either group protocol
//! (`CHRONICLE_KAFKA_GROUP_PROTOCOL`). Every partition's messages go to a queue of its own
//! (librdkafka's partition queues), read by that partition's worker ([`worker`]), so that a
//! worker retrying a batch holds up nothing but its own partition; the consumer's main queue is
//! still polled here, for the rebalances and errors it serves. A revoked partition's worker
//! stops what it retries; a batch it is still applying is kept from doing harm by the fence in
//! [`crate::batch`].
//!
//! The live projector also reports each applied offset to Kafka, after the PostgreSQL commit that
//! stored it (librdkafka commits the latest every second, and on revocation and close), so that
//! Kafka's own tools and lag monitors see the group's real lag. Those committed offsets are
//! advisory: nothing reads them back.
//!
//! Shutdown is bounded: retries stop at once, a batch in flight gets [`SHUTDOWN_GRACE`] to
//! commit and is then abandoned (rolled back, and redone by the next owner from the offsets in
//! PostgreSQL), and leaving the group gets [`CLOSE_PATIENCE`] (a broker that is gone notices
//! the member's absence by itself).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinSet;

use crate::GroupProtocol;
use crate::generation::Target;

mod rebalance;
mod worker;

pub(crate) use rebalance::Rebalancer;
use worker::{Stop, Worker};

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
    let consumer = Arc::new(create(
        kafka,
        settings,
        pool,
        start.keys().copied().collect(),
    )?);
    // Once split off, a partition's queue stays apart from the main one: [`consume`] takes them
    // up again, and nothing fetched in between reaches the main queue.
    for partition in start.keys() {
        drop(consumer.split_partition_queue(&kafka.topic, *partition));
    }
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in start {
        assignment.add_partition_offset(&kafka.topic, *partition, Offset::Offset(*offset))?;
    }
    consumer
        .assign(&assignment)
        .context("failed to assign the topic's partitions")?;
    Ok(consumer)
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
    // How much librdkafka fetches ahead of the workers. With a queue per partition, its queue
    // limits apply per partition: its defaults (100,000 messages or 64 MiB each, 50 MiB per
    // fetch) took the projector to 128 MiB of RSS while it caught up with a long log, and
    // 8 MiB per partition still to 280 MiB over 12 partitions. A few batches' worth per
    // partition keeps every worker fed (a batch is at most 500 events of well under 1 KiB).
    // A fetch response stays in memory until its last message is consumed, so the fetch size
    // bounds RSS too: with 4 MiB fetches and 1 MiB queues the projector peaked at 64-67 MiB while
    // catching up with 1M events, with 1 MiB and 512 KiB at 56-57 MiB, as fast (BENCHMARKS.md).
    // Operators may set other values through CHRONICLE_KAFKA_*.
    for (key, value) in [
        ("queued.min.messages", "2000"),
        ("queued.max.messages.kbytes", "512"),
        ("fetch.max.bytes", "1048576"),
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

/// How long a batch in flight at shutdown may take to commit before it is abandoned.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long leaving the group (and the final advisory commit) may take at shutdown.
pub(crate) const CLOSE_PATIENCE: Duration = Duration::from_secs(3);
/// How often the main queue is polled even when it has nothing: librdkafka counts the
/// application as alive (`max.poll.interval.ms`) only while it polls.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Works on every partition until `shutdown` resolves, then lets the workers finish the batches
/// in hand (within [`SHUTDOWN_GRACE`]).
pub(crate) async fn consume(
    consumer: Arc<EventConsumer>,
    pool: Pool,
    topic: String,
    settings: ConsumeSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop, requested) = Stop::new();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop.request();
    });
    let applied = Arc::new(AtomicU64::new(0));
    let statistics = tokio::spawn(keep_statistics_fresh(
        pool.clone(),
        settings.target.clone(),
        Arc::clone(&applied),
    ));
    let mut workers = Workers {
        consumer: Arc::clone(&consumer),
        pool,
        topic,
        settings,
        applied,
        stop: requested.clone(),
        started: HashSet::new(),
        tasks: JoinSet::new(),
    };
    // Before the first poll of the main queue, which is where partitions get assigned: each
    // partition's messages then go to its own queue from its first fetch on.
    for partition in partitions(&consumer, &workers.topic).await {
        workers.start(partition);
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    loop {
        let message = tokio::select! {
            () = requested.requested() => break,
            _ = keepalive.tick() => continue,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                // A partition the topic did not have when this member started (or messages
                // fetched before its queue was split): it gets its queue and worker now, which
                // seeks back to the stored offset if this skipped anything.
                let partition = message.partition();
                drop(message);
                workers.start(partition);
            }
            Err(err) => {
                tracing::warn!(error = %err, "consumer error");
                metrics::counter!("projector_consumer_errors_total").increment(1);
            }
        }
    }
    workers.stop().await;
    signal.abort();
    statistics.abort();
}

/// The topic's partitions, as the broker knows them (none if it does not answer: partitions are
/// then taken up as their messages arrive).
async fn partitions(consumer: &Arc<EventConsumer>, topic: &str) -> Vec<i32> {
    let consumer = Arc::clone(consumer);
    let name = topic.to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(10))?;
        Ok::<_, rdkafka::error::KafkaError>(
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == name)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<i32>>(),
        )
    })
    .await;
    match found {
        Ok(Ok(partitions)) => partitions,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, topic, "cannot list the topic's partitions");
            Vec::new()
        }
        Err(err) => {
            tracing::warn!(error = %err, topic, "cannot list the topic's partitions");
            Vec::new()
        }
    }
}

/// One worker per partition, each reading its partition's own queue.
struct Workers {
    consumer: Arc<EventConsumer>,
    pool: Pool,
    topic: String,
    settings: ConsumeSettings,
    applied: Arc<AtomicU64>,
    stop: Stop,
    started: HashSet<i32>,
    tasks: JoinSet<()>,
}

impl Workers {
    /// Splits `partition`'s queue off the main one and starts its worker, once.
    fn start(&mut self, partition: i32) {
        if self.started.contains(&partition) {
            return;
        }
        let Some(queue) = self.consumer.split_partition_queue(&self.topic, partition) else {
            tracing::error!(partition, "cannot split off the partition's queue");
            return;
        };
        self.started.insert(partition);
        self.tasks.spawn(
            Worker {
                consumer: Arc::clone(&self.consumer),
                queue,
                pool: self.pool.clone(),
                topic: self.topic.clone(),
                partition,
                settings: self.settings.clone(),
                applied_total: Arc::clone(&self.applied),
                stop: self.stop.clone(),
            }
            .run(),
        );
    }

    /// Waits for the workers to finish, abandoning what is still in flight after
    /// [`SHUTDOWN_GRACE`].
    async fn stop(mut self) {
        let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                grace_seconds = SHUTDOWN_GRACE.as_secs(),
                "abandoning unfinished batches; they are redone from the offsets in PostgreSQL"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// Leaves the group and closes the consumer, giving up after [`CLOSE_PATIENCE`] (a broker that
/// is gone cannot be told; the group notices by itself). Call after [`consume`] returned.
pub(crate) async fn close(consumer: Arc<EventConsumer>) {
    let deadline = tokio::time::Instant::now() + CLOSE_PATIENCE;
    // The last handle closes the consumer, which blocks on the network: let it be this one, on
    // a thread of its own (a `/readyz` check may still hold one for a moment). Not the
    // runtime's blocking pool, which would wait for it at exit.
    while Arc::strong_count(&consumer) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (closed, done) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            consumer.unsubscribe();
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start a thread to leave the group");
        return;
    }
    if tokio::time::timeout_at(deadline, done).await.is_err() {
        tracing::warn!(
            patience_seconds = CLOSE_PATIENCE.as_secs(),
            "the consumer did not close in time; leaving the group to notice"
        );
    }
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
