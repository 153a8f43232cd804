//! Applying a batch of one partition's events exactly once.
//!
//! A batch is applied in ONE transaction that also moves the partition's stored offset. The
//! offset update comes first and is conditional on the offset this worker believes is stored
//! (a fence): if another process applied events of this partition in the meantime, zero rows
//! change, nothing is applied, and the worker resumes from the stored offset. Because rows and
//! offset commit together, a process killed at any instant leaves either all of a batch or none.

use chronicle_events::{Envelope, Event};
use chronicle_infra::db::is_transient;
use chronicle_infra::progress::{CHANNEL, notification_payload};
use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::generation::{self, Layout, Target, q};
use crate::projection::{CounterDeltas, apply, hold_erasure_lock};

/// One message taken from the log.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied; the partition's next offset is now `next`.
    Applied {
        next: i64,
        applied: usize,
        dead: usize,
    },
    /// Another owner moved the partition to `stored`; nothing was applied.
    Fenced { stored: i64 },
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// The database is unreachable, out of resources, timed out or chose us as a deadlock
    /// victim: retry the same batch.
    #[error("transient database failure: {0}")]
    Transient(String),
    /// An event made a statement fail (see [`is_event_fault`]): retry event by event to find
    /// and park it.
    #[error("an event could not be applied: {0}")]
    Poisoned(tokio_postgres::Error),
    /// The database refused the batch for a reason that is neither transient nor the events'
    /// fault (a missing table, a refused privilege, an internal error): no event is to blame,
    /// so none is parked; retry until an operator has mended the database.
    #[error("the database refused the batch: {0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(err: tokio_postgres::Error) -> BatchError {
        if is_transient(&err) {
            BatchError::Transient(describe(&err))
        } else if is_event_fault(&err) {
            BatchError::Poisoned(err)
        } else {
            BatchError::Refused(describe(&err))
        }
    }
}

impl From<deadpool_postgres::PoolError> for BatchError {
    fn from(err: deadpool_postgres::PoolError) -> BatchError {
        BatchError::Transient(err.to_string())
    }
}

/// Whether `err` is the event's own fault, so that it can never apply and may become a dead
/// letter: a data exception (SQLSTATE class 22: a value out of range, an invalid string), an
/// integrity constraint violation (class 23: a handle another user holds, a missing row a
/// foreign key needs) or a program limit the event's data exceeds (class 54: an index row too
/// large). Every other failure is either transient ([`is_transient`]) or the database's, and
/// no event is parked for those.
pub(crate) fn is_event_fault(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(is_event_fault_state)
}

fn is_event_fault_state(code: &tokio_postgres::error::SqlState) -> bool {
    matches!(&code.code()[..2], "22" | "23" | "54")
}

/// What the server said (`Display` of a tokio-postgres error is only "db error").
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{db} (SQLSTATE {})", db.code().code()),
        None => err.to_string(),
    }
}

/// One partition of the log, projected into a target generation.
pub(crate) struct Partition<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) target: &'a Target,
}

impl Partition<'_> {
    /// The stored next offset in the target generation, creating the row (at 0) for a
    /// partition never seen before.
    pub(crate) async fn stored_offset(&self, pool: &Pool) -> Result<i64, BatchError> {
        let client = pool.get().await?;
        let generation = match self.target {
            Target::Building(name) => name.clone(),
            Target::Active => generation::active(&client)
                .await
                .map_err(|err| BatchError::Transient(format!("{err:#}")))?,
        };
        let row = client
            .query_one(
                "WITH created AS (
                     INSERT INTO projection.offsets (generation, topic, partition, next_offset)
                     VALUES ($3, $1, $2, 0) ON CONFLICT DO NOTHING RETURNING next_offset
                 )
                 SELECT next_offset FROM created
                 UNION ALL
                 SELECT next_offset FROM projection.offsets
                 WHERE generation = $3 AND topic = $1 AND partition = $2",
                &[&self.topic, &self.partition, &generation],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The active generation's stored offset for this partition (0 if it has none): how far a
    /// rebuild may go.
    pub(crate) async fn active_offset(&self, pool: &Pool) -> Result<i64, BatchError> {
        let client = pool.get().await?;
        let row = client
            .query_opt(
                "SELECT o.next_offset FROM projection.offsets o
                 JOIN projection.generations g ON g.name = o.generation AND g.state = 'active'
                 WHERE o.topic = $1 AND o.partition = $2",
                &[&self.topic, &self.partition],
            )
            .await?;
        Ok(row.map_or(0, |row| row.get(0)))
    }

    /// The generation this batch goes to and its layout. For the live projector, the active
    /// one, read with `FOR SHARE` so that a switch of generations waits for this batch; a
    /// building one is always of this code's layout (`rebuild` made it).
    async fn generation(&self, tx: &Transaction<'_>) -> Result<(String, Layout), BatchError> {
        match self.target {
            Target::Building(name) => Ok((name.clone(), Layout::current())),
            Target::Active => {
                let (name, version) = generation::active_held(tx).await?.ok_or_else(|| {
                    BatchError::Transient("no active generation: a switch is under way".into())
                })?;
                let layout = Layout::of_active(&name, version).map_err(BatchError::Transient)?;
                Ok((name, layout))
            }
        }
    }

    /// Applies `records` (those at or after `expected`) on top of stored offset `expected`.
    /// `careful` applies each event under its own savepoint, so that one failing event is
    /// parked as a dead letter instead of failing the batch.
    pub(crate) async fn apply_batch(
        &self,
        pool: &Pool,
        expected: i64,
        records_in: &[Record],
        careful: bool,
    ) -> Result<Outcome, BatchError> {
        // Only what comes after the stored offset, strictly increasing: after a seek the same
        // offsets can arrive twice.
        let mut records: Vec<&Record> = Vec::with_capacity(records_in.len());
        for record in records_in {
            if record.offset >= expected
                && records
                    .last()
                    .is_none_or(|last| record.offset > last.offset)
            {
                records.push(record);
            }
        }
        let Some(last) = records.last() else {
            return Ok(Outcome::Applied {
                next: expected,
                applied: 0,
                dead: 0,
            });
        };
        let next = last.offset + 1;
        let decoded: Vec<Result<Envelope, String>> = records
            .iter()
            .map(|record| match record.payload.as_deref() {
                Some(payload) => Envelope::from_json(payload).map_err(|err| err.to_string()),
                None => Err("the message has no payload".to_owned()),
            })
            .collect();
        let erased: Vec<Uuid> = decoded
            .iter()
            .flatten()
            .filter_map(|envelope| match &envelope.event {
                Event::UserErased(e) => Some(e.user_id),
                _ => None,
            })
            .collect();
        let mut client = pool.get().await?;
        let mut tx = client.transaction().await?;
        let (generation, layout) = self.generation(&tx).await?;
        let schema = generation::schema_of(&generation);
        let fence = tx
            .prepare_cached(
                "UPDATE projection.offsets SET next_offset = $3
                 WHERE generation = $5 AND topic = $1 AND partition = $2 AND next_offset = $4",
            )
            .await?;
        // Sent together: the lock costs no round trip of its own.
        let fence_params: [&(dyn ToSql + Sync); 5] =
            [&self.topic, &self.partition, &next, &expected, &generation];
        let (_, fenced) = tokio::try_join!(
            hold_erasure_lock(&tx, &schema, !erased.is_empty()),
            tx.execute(&fence, &fence_params)
        )?;
        if fenced == 0 {
            tx.rollback().await?;
            let stored = self.stored_offset(pool).await?;
            return Ok(Outcome::Fenced { stored });
        }

        // Undecodable events are parked, and so is every later event of a key that has a
        // parked event: events of one aggregate never overtake each other.
        let mut held = self.held_keys(&tx, &generation, &records).await?;
        let mut candidates: Vec<(&Record, Envelope)> = Vec::with_capacity(records.len());
        let mut dead = 0;
        let keys = crate::keys::for_envelopes(&tx, decoded.iter().flatten()).await?;
        for (record, decoded) in records.iter().copied().zip(decoded) {
            if self.park_if_held(&tx, &generation, record, &held).await? {
                dead += 1;
                continue;
            }
            let opened = decoded.and_then(|mut envelope| {
                crate::keys::open(&mut envelope, &keys)?;
                Ok(envelope)
            });
            match opened {
                Ok(envelope) => candidates.push((record, envelope)),
                Err(err) => {
                    self.park(&tx, &generation, record, &err).await?;
                    held.extend(key_of(record));
                    dead += 1;
                }
            }
        }

        let mut deltas = CounterDeltas::default();
        let mut applied = 0;
        if careful {
            for (record, envelope) in &candidates {
                if self.park_if_held(&tx, &generation, record, &held).await? {
                    dead += 1;
                    continue;
                }
                match apply_once(&mut tx, &schema, layout, envelope, &mut deltas).await {
                    Ok(Once::Applied) => applied += 1,
                    Ok(Once::SeenBefore) => {
                        tracing::info!(event.id = %envelope.event_id, "skipping an event applied before");
                    }
                    // Only an event that can never apply is parked; anything else fails the
                    // batch, which is retried as a whole.
                    Err(err) if !is_event_fault(&err) => return Err(err.into()),
                    Err(err) => {
                        let error = format!("could not apply: {}", describe(&err));
                        self.park(&tx, &generation, record, &error).await?;
                        held.extend(key_of(record));
                        dead += 1;
                    }
                }
            }
        } else {
            let ids: Vec<Uuid> = candidates.iter().map(|(_, e)| e.event_id).collect();
            let mut unseen = first_sightings(&tx, &schema, &ids).await?;
            let fresh: Vec<&Envelope> = candidates
                .iter()
                .map(|(_, envelope)| envelope)
                .filter(|envelope| {
                    let first = unseen.remove(&envelope.event_id);
                    if !first {
                        tracing::info!(event.id = %envelope.event_id, "skipping an event applied before");
                    }
                    first
                })
                .collect();
            apply(&tx, &schema, layout, &fresh, &mut deltas).await?;
            applied = fresh.len();
        }
        // The notification goes out at commit, wherever it is sent in the transaction; sent
        // before the counters, it keeps the row locks they take (which batches of other
        // partitions may be waiting for) held for as short a time as possible.
        let note = notification_payload(&generation, self.topic, self.partition, next);
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        tx.execute(&notify, &[&CHANNEL, &note]).await?;
        // An event appended twice (a retried command) was applied at its first offset.
        let mut offsets = HashMap::new();
        if layout.streams {
            offsets.reserve(candidates.len());
            for (record, envelope) in &candidates {
                offsets.entry(envelope.event_id).or_insert(record.offset);
            }
            deltas
                .pushes
                .write_ready(&tx, &schema, self.partition, &offsets)
                .await?;
        }
        deltas.write(&tx, &schema, layout).await?;
        if layout.streams {
            deltas
                .pushes
                .write(&tx, &schema, self.partition, &offsets)
                .await?;
        }
        tx.commit().await?;
        for user in erased {
            crate::keys::forget(user);
        }
        Ok(Outcome::Applied {
            next,
            applied,
            dead,
        })
    }

    /// The keys among `records`' that have a dead letter awaiting a decision.
    async fn held_keys(
        &self,
        tx: &Transaction<'_>,
        generation: &str,
        records: &[&Record],
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let mut keys: Vec<String> = records.iter().filter_map(|r| key_of(r)).collect();
        keys.sort_unstable();
        keys.dedup();
        let statement = tx
            .prepare_cached(
                "SELECT DISTINCT key FROM projection.dead_letters
                 WHERE generation = $1 AND topic = $2 AND partition = $3
                   AND resolved_at IS NULL AND key = ANY($4)",
            )
            .await?;
        Ok(tx
            .query(
                &statement,
                &[&generation, &self.topic, &self.partition, &keys],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    /// Parks `record` if its key is held (in `held`) behind a dead letter; whether it did.
    async fn park_if_held(
        &self,
        tx: &Transaction<'_>,
        generation: &str,
        record: &Record,
        held: &HashSet<String>,
    ) -> Result<bool, tokio_postgres::Error> {
        let Some(key) = key_of(record).filter(|key| held.contains(key)) else {
            return Ok(false);
        };
        let error =
            format!("held: an earlier event of key {key} is a dead letter awaiting a decision");
        self.park(tx, generation, record, &error).await?;
        Ok(true)
    }

    async fn park(
        &self,
        tx: &Transaction<'_>,
        generation: &str,
        record: &Record,
        error: &str,
    ) -> Result<(), tokio_postgres::Error> {
        tracing::warn!(
            partition = self.partition,
            offset = record.offset,
            error,
            "parking an event that cannot be projected"
        );
        let key = key_of(record);
        let statement = tx
            .prepare_cached(
                "INSERT INTO projection.dead_letters
                     (generation, topic, partition, \"offset\", key, payload, error)
                 VALUES ($7, $1, $2, $3, $4, $5, $6)
                 ON CONFLICT (generation, topic, partition, \"offset\") DO NOTHING",
            )
            .await?;
        tx.execute(
            &statement,
            &[
                &self.topic,
                &self.partition,
                &record.offset,
                &key.as_deref(),
                &record.payload.as_deref(),
                &error,
                &generation,
            ],
        )
        .await?;
        Ok(())
    }
}

/// A record's key, as the dead-letter table keeps it.
fn key_of(record: &Record) -> Option<String> {
    record
        .key
        .as_deref()
        .map(|key| String::from_utf8_lossy(key).into_owned())
}

/// What [`apply_once`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Once {
    Applied,
    /// The event id was applied before; nothing changed.
    SeenBefore,
}

/// Applies one event unless its id was applied before, under a savepoint: if it fails, nothing
/// of it (not even the record of its id) remains, and the transaction goes on.
pub(crate) async fn apply_once(
    tx: &mut Transaction<'_>,
    schema: &str,
    layout: Layout,
    envelope: &Envelope,
    deltas: &mut CounterDeltas,
) -> Result<Once, tokio_postgres::Error> {
    let savepoint = tx.savepoint("event").await?;
    let mut own = CounterDeltas::default();
    let outcome = async {
        if first_sightings(&savepoint, schema, &[envelope.event_id])
            .await?
            .is_empty()
        {
            return Ok(Once::SeenBefore);
        }
        apply(&savepoint, schema, layout, &[envelope], &mut own).await?;
        Ok(Once::Applied)
    }
    .await;
    match outcome {
        Ok(once) => {
            savepoint.commit().await?;
            deltas.merge(own);
            Ok(once)
        }
        Err(err) => {
            savepoint.rollback().await?;
            Err(err)
        }
    }
}

/// The event ids among `ids` that were never applied before, recording them as applied. An
/// event appended twice (a retried command whose first answer was lost) is thereby applied once.
pub(crate) async fn first_sightings(
    tx: &Transaction<'_>,
    schema: &str,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let statement = tx
        .prepare_cached(&q(
            schema,
            "INSERT INTO {s}.applied_events (event_id) SELECT unnest($1::uuid[])
             ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        ))
        .await?;
    Ok(tx
        .query(&statement, &[&ids])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn only_the_events_own_faults_park_it() {
        for (code, parked) in [
            ("22001", true),
            ("22P02", true),
            ("23505", true),
            ("23503", true),
            ("54000", true),
            // Transient: retried as is.
            ("55P03", false),
            ("57014", false),
            ("53100", false),
            ("40P01", false),
            ("08006", false),
            ("25006", false),
            // The database's: retried until mended.
            ("42P01", false),
            ("42501", false),
            ("XX000", false),
        ] {
            let state = SqlState::from_code(code);
            assert_eq!(is_event_fault_state(&state), parked, "SQLSTATE {code}");
        }
    }
}
