//! Background deletion of rows that have outlived their use (expired idempotency keys and
//! sessions), in bounded batches so that no statement holds many locks or runs long.

use std::time::Duration;

use deadpool_postgres::Pool;

/// Most rows one statement deletes.
const BATCH: i64 = 1000;

/// What to purge: a `DELETE` of at most `$2` rows older than `$1` seconds, and its name in logs.
pub(crate) struct Purge {
    /// The statement: `$1` the age in seconds (`float8`), `$2` the batch size (`int8`).
    pub(crate) sql: &'static str,
    /// What its rows are, for the logs ("expired sessions").
    pub(crate) what: &'static str,
    /// The age `$1` stands for.
    pub(crate) age: Duration,
}

/// Runs `purge` every `every`, until the batch comes back short, for as long as the process
/// runs. Logs how many rows went; a failure is logged and retried at the next tick.
pub(crate) async fn every(pool: Pool, every: Duration, purge: Purge) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match run(&pool, &purge).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted {}", purge.what),
            Err(err) => tracing::warn!(error = %err, "failed to delete {}", purge.what),
        }
    }
}

async fn run(pool: &Pool, purge: &Purge) -> anyhow::Result<u64> {
    let client = pool.get().await?;
    let delete = client.prepare_cached(purge.sql).await?;
    let age = purge.age.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = client.execute(&delete, &[&age, &BATCH]).await?;
        total += deleted;
        if deleted < BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}
