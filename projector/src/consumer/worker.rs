//! One partition's worker: reads the partition's own queue and applies what has arrived as one
//! batch, again and again, retrying with backoff what fails for reasons no event is to blame for.
//!
//! A worker only applies while this member owns its partition: when the partition is revoked
//! it drops what it holds (the next owner starts from the stored offset), and when the
//! partition comes back it first re-reads where the partition stands. Every wait (a backoff, a
//! rebuild waiting for the active generation) ends as soon as shutdown is requested.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::{ConsumeSettings, EventConsumer, Rebalancer};
use crate::batch::{BatchError, Outcome, Partition, Record};
use crate::generation::Target;

/// The first pause after a failed attempt; each further failure doubles it, up to
/// [`LONGEST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// A request to stop, seen by every worker.
#[derive(Clone)]
pub(super) struct Stop(watch::Receiver<bool>);

/// The side that requests the stop.
pub(super) struct StopRequest(watch::Sender<bool>);

impl Stop {
    /// A stop not yet requested, and the means to request it.
    pub(super) fn new() -> (StopRequest, Stop) {
        let (sender, receiver) = watch::channel(false);
        (StopRequest(sender), Stop(receiver))
    }

    /// Whether the stop was requested (or its requester is gone).
    pub(super) fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once the stop is requested (or its requester is gone).
    pub(super) async fn requested(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `pause`; false if the stop was requested meanwhile.
    async fn sleep(&self, pause: Duration) -> bool {
        tokio::select! {
            () = self.requested() => false,
            () = tokio::time::sleep(pause) => !self.is_requested(),
        }
    }
}

impl StopRequest {
    /// Asks every worker to stop.
    pub(super) fn request(&self) {
        self.0.send_replace(true);
    }
}

/// Exponential backoff between attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(FIRST_BACKOFF)
    }

    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(LONGEST_BACKOFF);
        pause
    }
}

/// Why a worker put down what it was doing.
enum Interrupted {
    /// Shutdown was requested.
    Stopping,
    /// The partition was revoked (and maybe assigned again) meanwhile.
    Reassigned,
}

/// Everything one partition's worker needs.
pub(super) struct Worker {
    pub(super) consumer: Arc<EventConsumer>,
    pub(super) queue: StreamPartitionQueue<Rebalancer>,
    pub(super) pool: Pool,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) settings: ConsumeSettings,
    pub(super) applied_total: Arc<AtomicU64>,
    pub(super) stop: Stop,
}

impl Worker {
    fn rebalancer(&self) -> &Rebalancer {
        self.consumer.context()
    }

    fn part(&self) -> Partition<'_> {
        Partition {
            topic: &self.topic,
            partition: self.partition,
            target: &self.settings.target,
        }
    }

    /// Works on the partition until shutdown is requested.
    pub(super) async fn run(self) {
        let partition = self.partition;
        let batch_size = self.settings.batch_size;
        let part = self.part();
        // The assignment being worked on, and the partition's stored offset in it.
        let mut assignment = None;
        let mut expected = 0;
        let mut batch: Vec<Record> = Vec::with_capacity(batch_size);
        let mut held: Vec<Record> = Vec::new();
        let mut gap_seen_at = None;
        loop {
            if held.is_empty() {
                tokio::select! {
                    () = self.stop.requested() => break,
                    message = self.queue.recv() => match message {
                        Ok(message) => batch.push(record(&message)),
                        Err(err) => {
                            tracing::warn!(partition, error = %err, "consumer error");
                            metrics::counter!("projector_consumer_errors_total").increment(1);
                            continue;
                        }
                    },
                }
            } else {
                // A rebuild never gets ahead of the active generation: what lies beyond its
                // stored offset waits here until the live projector has applied it.
                batch.append(&mut held);
            }
            self.take_arrived(&mut batch);
            let Some(current) = self.rebalancer().assignment(partition) else {
                // Fetched before the partition was revoked; its next owner starts from the
                // stored offset.
                batch.clear();
                held.clear();
                assignment = None;
                continue;
            };
            if assignment != Some(current) {
                match self
                    .persist(current, "cannot read the stored offset", || {
                        part.stored_offset(&self.pool)
                    })
                    .await
                {
                    Ok(stored) => {
                        assignment = Some(current);
                        expected = stored;
                        gap_seen_at = None;
                        self.rebalancer().note_applied(partition, expected);
                        tracing::info!(partition, offset = expected, "projecting partition");
                    }
                    Err(Interrupted::Stopping) => break,
                    Err(Interrupted::Reassigned) => {
                        batch.clear();
                        held.clear();
                        continue;
                    }
                }
            }
            if matches!(self.settings.target, Target::Building(_)) {
                let bound = match self
                    .persist(current, "cannot read the active offset", || {
                        part.active_offset(&self.pool)
                    })
                    .await
                {
                    Ok(bound) => bound,
                    Err(Interrupted::Stopping) => break,
                    Err(Interrupted::Reassigned) => {
                        batch.clear();
                        held.clear();
                        continue;
                    }
                };
                if let Some(at) = batch.iter().position(|r| r.offset >= bound) {
                    held = batch.split_off(at);
                }
                if batch.is_empty() {
                    if !self.stop.sleep(Duration::from_millis(50)).await {
                        break;
                    }
                    continue;
                }
            }
            // Offsets in our topic are contiguous, so a batch that does not start at the stored
            // offset holds messages read ahead before a seek (or fetched before the partition's
            // queue was split off). Seek back once; if the same gap comes back, the log really
            // has a hole there (compaction, transaction markers): accept it.
            let first = batch
                .iter()
                .map(|r| r.offset)
                .filter(|o| *o >= expected)
                .min();
            if let Some(first) =
                first.filter(|first| *first > expected && gap_seen_at != Some(*first))
            {
                tracing::warn!(
                    partition,
                    expected,
                    first,
                    "gap before the batch; seeking back"
                );
                gap_seen_at = Some(first);
                self.seek(expected);
                batch.clear();
                held.clear();
                continue;
            }
            match self.apply(current, expected, &batch).await {
                Ok(next) => expected = next,
                Err(Interrupted::Stopping) => break,
                Err(Interrupted::Reassigned) => held.clear(),
            }
            batch.clear();
        }
        tracing::info!(partition, "stopped projecting partition");
    }

    /// Adds what has already arrived to `batch`, up to the batch size, without waiting.
    fn take_arrived(&self, batch: &mut Vec<Record>) {
        while batch.len() < self.settings.batch_size {
            match poll_once(self.queue.recv()) {
                Some(Ok(message)) => batch.push(record(&message)),
                Some(Err(err)) => {
                    tracing::warn!(partition = self.partition, error = %err, "consumer error");
                    metrics::counter!("projector_consumer_errors_total").increment(1);
                }
                None => break,
            }
        }
    }

    /// Applies `batch` on top of stored offset `expected` in assignment `assignment`, retrying
    /// until it is applied, fenced, or put down; the partition's next offset.
    async fn apply(
        &self,
        assignment: u64,
        expected: i64,
        batch: &[Record],
    ) -> Result<i64, Interrupted> {
        let partition = self.partition;
        let started = Instant::now();
        let mut careful = false;
        let mut backoff = Backoff::new();
        loop {
            match self
                .part()
                .apply_batch(&self.pool, expected, batch, careful)
                .await
            {
                Ok(Outcome::Applied {
                    next,
                    applied,
                    dead,
                }) => {
                    self.rebalancer().note_applied(partition, next);
                    if self.settings.target == Target::Active {
                        report_applied(&self.consumer, &self.topic, partition, next);
                    }
                    metrics::counter!("projector_events_applied_total").increment(applied as u64);
                    self.applied_total
                        .fetch_add(applied as u64, Ordering::Relaxed);
                    metrics::counter!("projector_dead_letters_total").increment(dead as u64);
                    metrics::histogram!("projector_batch_size").record(batch.len() as f64);
                    metrics::histogram!("projector_batch_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(next);
                }
                Ok(Outcome::Fenced { stored }) => {
                    tracing::warn!(
                        partition,
                        expected,
                        stored,
                        "another owner moved this partition; resuming from its offset"
                    );
                    self.seek(stored);
                    return Ok(stored);
                }
                Err(BatchError::Poisoned(err)) if !careful => {
                    tracing::warn!(partition, error = %err, "a batch failed; retrying event by event");
                    careful = true;
                    continue;
                }
                Err(err @ BatchError::Refused(_)) => {
                    tracing::error!(partition, error = %err, "batch not applied; retrying");
                    metrics::counter!("projector_batch_retries_total", "reason" => "refused")
                        .increment(1);
                }
                Err(err) => {
                    tracing::warn!(partition, error = %err, "batch not applied; retrying");
                    metrics::counter!("projector_batch_retries_total", "reason" => "transient")
                        .increment(1);
                }
            }
            self.pause(assignment, backoff.next()).await?;
        }
    }

    /// Runs `attempt` until it succeeds, pausing with backoff between failures.
    async fn persist<T, F, Fut>(
        &self,
        assignment: u64,
        what: &str,
        mut attempt: F,
    ) -> Result<T, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BatchError>>,
    {
        let mut backoff = Backoff::new();
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    tracing::warn!(partition = self.partition, error = %err, "{what}; retrying");
                }
            }
            self.pause(assignment, backoff.next()).await?;
        }
    }

    /// Sleeps for `pause` before another attempt, unless shutdown is requested or the
    /// partition's assignment changed (before or during the pause).
    async fn pause(&self, assignment: u64, pause: Duration) -> Result<(), Interrupted> {
        let reassigned = || self.rebalancer().assignment(self.partition) != Some(assignment);
        if self.stop.is_requested() {
            return Err(Interrupted::Stopping);
        }
        if reassigned() {
            return Err(Interrupted::Reassigned);
        }
        if !self.stop.sleep(pause).await {
            return Err(Interrupted::Stopping);
        }
        if reassigned() {
            return Err(Interrupted::Reassigned);
        }
        Ok(())
    }

    /// Moves the partition's fetch position to `offset`, without waiting: messages fetched
    /// before are discarded by librdkafka.
    fn seek(&self, offset: i64) {
        if let Err(err) = self.consumer.seek(
            &self.topic,
            self.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            tracing::warn!(partition = self.partition, error = %err, "seek failed");
        }
    }
}

/// The message's content, detached from librdkafka's buffers.
fn record(message: &impl Message) -> Record {
    Record {
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

/// Polls `future` once: its output if it is ready.
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
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
