//! The rebalance callback: which partitions this member owns, where each starts (the offsets
//! stored in PostgreSQL, never Kafka's), and the lag it reports.
//!
//! The callback runs synchronously inside `recv()`. It handles both kinds of rebalance: eager
//! ones (the classic protocol with range assignment), where ASSIGN hands over the member's whole
//! new assignment and REVOKE takes all of it back, and incremental ones (the consumer protocol,
//! KIP-848), where ASSIGN and REVOKE carry only the partitions added or removed.
//!
//! Each assignment of a partition gets a number of its own, so that the partition's worker
//! notices when it lost the partition or got it back (and must re-read where it stands), and
//! stops retrying a batch for a partition it no longer owns.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::Pool;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::batch::{BatchError, Partition};
use crate::generation::Target;

/// How long the rebalance callback waits for the stored offsets before it starts the assigned
/// partitions from the beginning instead (safe, only slower).
const STORED_OFFSETS_PATIENCE: Duration = Duration::from_secs(3);

/// The partitions a member owns, numbered by assignment.
struct Owned {
    partitions: HashMap<i32, u64>,
    assignments: u64,
}

impl Owned {
    fn new(partitions: HashSet<i32>) -> Owned {
        let mut owned = Owned {
            partitions: HashMap::new(),
            assignments: 0,
        };
        owned.assign(&partitions.into_iter().collect::<Vec<_>>());
        owned
    }

    fn assign(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.assignments += 1;
            self.partitions.insert(*partition, self.assignments);
        }
    }
}

/// Rebalance handling with offsets from Postgres.
pub(crate) struct Rebalancer {
    pool: Pool,
    topic: String,
    target: Target,
    runtime: tokio::runtime::Handle,
    /// The partitions this member owns, each with the number of its assignment.
    owned: Mutex<Owned>,
    /// Per partition, the next offset applied so far (for the lag in `/metrics`).
    applied: Mutex<HashMap<i32, i64>>,
}

impl Rebalancer {
    pub(super) fn new(
        pool: Pool,
        topic: String,
        target: Target,
        owned: HashSet<i32>,
    ) -> Rebalancer {
        Rebalancer {
            pool,
            topic,
            target,
            runtime: tokio::runtime::Handle::current(),
            owned: Mutex::new(Owned::new(owned)),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this member owns `partition` now.
    pub(super) fn owns(&self, partition: i32) -> bool {
        self.assignment(partition).is_some()
    }

    /// The number of this member's current assignment of `partition`, if it owns it: a new
    /// one each time the partition is assigned.
    pub(super) fn assignment(&self, partition: i32) -> Option<u64> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .partitions
            .get(&partition)
            .copied()
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
        // The callback runs inside the consumer's poll: a database that does not answer must
        // not hold up the group (or the shutdown) for long.
        let load = async {
            tokio::time::timeout(STORED_OFFSETS_PATIENCE, load)
                .await
                .map_err(|_| {
                    BatchError::Transient(format!(
                        "no answer within {} s",
                        STORED_OFFSETS_PATIENCE.as_secs()
                    ))
                })?
        };
        Ok(tokio::task::block_in_place(|| self.runtime.block_on(load))?)
    }

    /// Records that `partition` is applied up to `next` (for the lag).
    pub(super) fn note_applied(&self, partition: i32, next: i64) {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, next);
    }

    /// Sets each partition of `partitions` to start at its offset stored in PostgreSQL; returns
    /// whether those were known (they are then worth reporting to Kafka).
    fn set_start_offsets(&self, numbers: &[i32], partitions: &mut TopicPartitionList) -> bool {
        let (stored, known) = match self.stored_offsets(numbers) {
            Ok(stored) => (stored, true),
            // Starting from the beginning is safe, only slower: workers skip every offset below
            // the stored one. (Not from Kafka's committed offsets, which may belong to another
            // database.)
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "cannot read stored offsets; starting assigned partitions from the beginning"
                );
                (HashMap::new(), false)
            }
        };
        for partition in numbers {
            let start = stored
                .get(partition)
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(err) = partitions.set_partition_offset(&self.topic, *partition, start) {
                tracing::error!(error = %err, partition, "cannot set start offset");
            }
        }
        known
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
    /// librdkafka says which kind of rebalance is in use (see the module's documentation); an
    /// incremental one must be answered with `incremental_assign`/`incremental_unassign`, which
    /// change the assignment by the partitions given, and librdkafka refuses `assign`/`unassign`.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let incremental = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let known = self.set_start_offsets(&numbers, partitions);
                {
                    let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
                    if !incremental {
                        owned.partitions.clear();
                    }
                    owned.assign(&numbers);
                }
                tracing::info!(partitions = ?numbers, incremental, "partitions assigned");
                let assigned = if incremental {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                match assigned {
                    // The new owner reports where PostgreSQL says the partitions stand, so that
                    // Kafka's committed offsets catch up even when no new event arrives for a
                    // partition whose previous owner died before committing.
                    Ok(()) if known && self.target == Target::Active => {
                        if let Err(err) = consumer.store_offsets(partitions) {
                            tracing::debug!(error = %err, "start offsets not reported to Kafka");
                        }
                    }
                    Ok(()) => {}
                    Err(err) => tracing::error!(error = %err, incremental, "assign failed"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
                    for partition in &numbers {
                        owned.partitions.remove(partition);
                    }
                }
                // Lost partitions (this member was fenced, e.g. after missing its session
                // timeout) may already have another owner; the fence in `crate::batch` keeps a
                // batch still in flight from doing harm either way.
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?numbers, incremental, lost, "partitions revoked");
                let unassigned = if incremental {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(err) = unassigned {
                    tracing::error!(error = %err, incremental, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                self.owned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .partitions
                    .clear();
                let unassigned = if incremental {
                    consumer
                        .assignment()
                        .and_then(|current| consumer.incremental_unassign(&current))
                } else {
                    consumer.unassign()
                };
                if let Err(err) = unassigned {
                    tracing::error!(error = %err, "unassign failed");
                }
            }
        }
    }
}
