//! The rebalance callback: which partitions this member owns, where each starts (the offsets
//! stored in PostgreSQL, never Kafka's), and the lag it reports.
//!
//! The callback runs synchronously inside `recv()`. It handles both kinds of rebalance: eager
//! ones (the classic protocol with range assignment), where ASSIGN hands over the member's whole
//! new assignment and REVOKE takes all of it back, and incremental ones (the consumer protocol,
//! KIP-848), where ASSIGN and REVOKE carry only the partitions added or removed.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use deadpool_postgres::Pool;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::batch::{BatchError, Partition};
use crate::generation::Target;

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
            owned: Mutex::new(owned),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this member owns `partition` now.
    pub(super) fn owns(&self, partition: i32) -> bool {
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
                        owned.clear();
                    }
                    owned.extend(numbers.iter().copied());
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
                        owned.remove(partition);
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
