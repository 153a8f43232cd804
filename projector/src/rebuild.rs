//! `projector rebuild`: a new generation of every read model from offset 0, built while the
//! active generation keeps serving, verified, then switched to atomically.
//!
//! 1. Take the rebuild lock (a session advisory lock: two rebuilds at once are refused).
//! 2. Create a `building` generation and project every partition into it from offset 0, never
//!    past the active generation's stored offsets (workers hold what lies beyond).
//! 3. Once it is close behind, freeze the active generation (`FOR UPDATE` on its row, which
//!    live batches take `FOR SHARE`), let the new one reach exactly the same offsets, take a
//!    snapshot (a `REPEATABLE READ` transaction) and let live projection go on at once.
//! 4. If both were built by the same projection code, compare them table by table in that
//!    snapshot, while both move on; refuse to switch on a difference unless `--accept-diff`.
//! 5. Freeze again, let the new generation catch up with what the live projector applied
//!    meanwhile (the same projection code applying the same events to both), stop projecting
//!    into it, and in the same transaction retire the old generation, activate the new one and
//!    notify the APIs. The live projector's next batch goes to the new generation, at the same
//!    offsets. Both freezes are short (they wait for a small gap only, never for the
//!    comparison); their time is reported.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_infra::progress::{CHANNEL, activation_payload};
use deadpool_postgres::{GenericClient, Pool};
use indicatif::{ProgressBar, ProgressStyle};

use crate::consumer;
use crate::generation::{self, PROJECTION_VERSION, REBUILD_LOCK, Target};
use crate::{Config, verify};

/// How far behind the active generation (in events, over all partitions) the new one may be
/// when a freeze begins; the active one is frozen while the new one closes that gap. Once the
/// new one has caught up, it trails live projection by a batch or so, so a small bound costs
/// little waiting and keeps what the freeze waits for small.
const CLOSE_ENOUGH: i64 = 250;

/// How long the active generation may stay frozen waiting for the new one to catch up before
/// the attempt is given up (and tried again later).
const FREEZE_LIMIT: Duration = Duration::from_secs(20);

/// Builds a new generation and switches to it. With `accept_diff`, switches even when it
/// differs from the active one.
pub async fn rebuild(config: &Config, accept_diff: bool) -> anyhow::Result<()> {
    let pool = config.migrated_pool().await?;
    let (lock, connection) = config
        .database
        .pg_config()?
        .connect()
        .await
        .context("cannot reach the database")?;
    tokio::spawn(connection);
    let locked: bool = lock
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext($1))",
            &[&REBUILD_LOCK],
        )
        .await?
        .get(0);
    if !locked {
        bail!("another rebuild is running; two rebuilds at once are refused");
    }

    let topic = config.kafka.topic.clone();
    let partitions = config.kafka.ensure_topic(Duration::from_secs(30)).await?;
    let name = generation::create(&pool).await?;
    let start: HashMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    pool.get()
        .await?
        .execute(
            "INSERT INTO projection.offsets (generation, topic, partition, next_offset)
             SELECT $1, $2, p, 0 FROM generate_series(0, $3 - 1) p",
            &[&name, &topic, &partitions],
        )
        .await?;
    tracing::info!(generation = %name, partitions, "rebuilding the read models from offset 0");

    let settings = config.consume_settings(
        format!("chronicle-rebuild-{name}"),
        Target::Building(name.clone()),
    );
    let events = consumer::assign_all(&config.kafka, &settings, pool.clone(), &start)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut consuming = Some((
        stop,
        tokio::spawn(consumer::consume(
            events.clone(),
            pool.clone(),
            topic.clone(),
            settings,
            async move {
                let _ = stopped.await;
            },
        )),
    ));

    let report = Report::new();
    let started = Instant::now();
    let mut frozen = Frozen::default();
    let mut compared: Option<Compared> = None;
    // Events the live projector applied between the comparison's snapshot and the switch.
    let applied_meanwhile;
    let old = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let client = pool.get().await?;
        let gap = Gap::measure(&client, &name, &topic).await?;
        report.show(&gap);
        if consuming
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished())
        {
            bail!("projecting into {name} stopped unexpectedly; see the log");
        }
        if gap.behind > CLOSE_ENOUGH {
            continue;
        }
        let Some(done) = &compared else {
            match compare_on_snapshot(&pool, &topic, &name, &mut frozen.aligning).await? {
                Some(done) => {
                    done.judge(&name, accept_diff)?;
                    compared = Some(done);
                }
                None => tracing::info!("not caught up within the freeze limit; trying again"),
            }
            // Whatever the live projector applied during the comparison, the new generation
            // follows before the second freeze.
            continue;
        };
        if let Some(at_switch) = switch(
            &pool,
            &topic,
            &name,
            &done.old,
            &mut consuming,
            &mut frozen.switching,
        )
        .await?
        {
            applied_meanwhile = done.at_snapshot.map(|at| at_switch - at);
            break done.old.clone();
        }
        tracing::info!("not caught up within the freeze limit; trying again");
    };
    report.finish();
    tokio::task::spawn_blocking(move || drop(events)).await?;
    let compared_in = match compared.as_ref().and_then(|done| done.took) {
        Some(took) => format!(
            "compared on a snapshot in {} ms; the live projector applied {} events between the \
             snapshot and the switch",
            took.as_millis(),
            applied_meanwhile.unwrap_or(0)
        ),
        None => "not compared".to_owned(),
    };
    println!(
        "live projection frozen for {} ms in all ({} ms to align the generations for the \
         snapshot, {} ms to catch up and switch); {compared_in}",
        frozen.total().as_millis(),
        frozen.aligning.as_millis(),
        frozen.switching.as_millis(),
    );
    println!(
        "generation {name} is active (built in {:.1} s); {old} is retired and stays until \
         `projector generations drop {old}`",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How far the new generation is behind the active one.
struct Gap {
    built: i64,
    target: i64,
    behind: i64,
}

impl Gap {
    async fn measure(client: &impl GenericClient, name: &str, topic: &str) -> anyhow::Result<Gap> {
        let row = client
            .query_one(
                "SELECT coalesce(sum(s.next_offset), 0)::bigint,
                        coalesce(sum(a.next_offset), 0)::bigint,
                        coalesce(sum(greatest(a.next_offset - coalesce(s.next_offset, 0), 0)), 0)::bigint
                 FROM projection.offsets a
                 JOIN projection.generations g ON g.name = a.generation AND g.state = 'active'
                 LEFT JOIN projection.offsets s
                     ON s.generation = $1 AND s.topic = a.topic AND s.partition = a.partition
                 WHERE a.topic = $2",
                &[&name, &topic],
            )
            .await?;
        Ok(Gap {
            built: row.get(0),
            target: row.get(1),
            behind: row.get(2),
        })
    }
}

type Consuming = Option<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)>;

/// How long live projection was frozen, over all attempts (given up ones included).
#[derive(Debug, Default)]
struct Frozen {
    /// To bring both generations to the same offsets and take the comparison's snapshot.
    aligning: Duration,
    /// To let the new generation catch up again, stop projecting into it and switch.
    switching: Duration,
}

impl Frozen {
    fn total(&self) -> Duration {
        self.aligning + self.switching
    }
}

/// The active generation frozen: its row held `FOR UPDATE`, which the live projector's batches
/// take `FOR SHARE`, so none commits until this transaction ends. Made only once `name` has
/// reached the active generation's offsets.
struct Freeze<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    /// The active generation.
    old: String,
    /// When the freeze was asked for (waiting for batches in flight included).
    since: Instant,
}

impl<'a> Freeze<'a> {
    /// Freezes the active generation and waits for `name` to reach its offsets. `None` (the
    /// freeze released, its time added to `spent`) when it did not within [`FREEZE_LIMIT`].
    async fn catch_up(
        client: &'a mut deadpool_postgres::Client,
        topic: &str,
        name: &str,
        spent: &mut Duration,
    ) -> anyhow::Result<Option<Freeze<'a>>> {
        let since = Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
        let row = tx
            .query_one(
                "SELECT name FROM projection.generations WHERE state = 'active' FOR UPDATE",
                &[],
            )
            .await
            .context("cannot freeze the active generation")?;
        loop {
            let gap = Gap::measure(&tx, name, topic).await?;
            if gap.behind == 0 {
                return Ok(Some(Freeze {
                    tx,
                    old: row.get(0),
                    since,
                }));
            }
            if since.elapsed() > FREEZE_LIMIT {
                tx.rollback().await?;
                *spent += since.elapsed();
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets live projection go on, nothing changed; adds the frozen time to `spent`.
    async fn release(self, spent: &mut Duration) -> anyhow::Result<()> {
        self.tx.rollback().await?;
        *spent += self.since.elapsed();
        Ok(())
    }
}

/// What the comparison on a snapshot found.
struct Compared {
    /// The active generation compared against.
    old: String,
    /// The comparison; `None` when the two were built by different projection code.
    comparison: Option<verify::Comparison>,
    /// How long the comparison took (`None`: not compared).
    took: Option<Duration>,
    /// The projection code version that built `old`.
    old_version: i32,
    /// How many events the active generation had applied at the snapshot (`None`: not
    /// compared).
    at_snapshot: Option<i64>,
}

impl Compared {
    /// Prints the comparison; fails when it found a difference and `accept_diff` is not set.
    fn judge(&self, name: &str, accept_diff: bool) -> anyhow::Result<()> {
        let old = &self.old;
        let Some(comparison) = &self.comparison else {
            println!(
                "{old} was built by projection code v{}, {name} by v{PROJECTION_VERSION}: not \
                 compared",
                self.old_version
            );
            return Ok(());
        };
        print!("{comparison}");
        if !comparison.identical() && !accept_diff {
            bail!(
                "generation {name} differs from {old}, built by the same projection code; not \
                 switching. Inspect it with `projector verify {old} {name}`, drop it with \
                 `projector generations drop {name}`, or rebuild with --accept-diff"
            );
        }
        Ok(())
    }
}

/// Compares `name` with the active generation at the same offsets, without holding live
/// projection for the comparison: frozen only until both are at the same offsets and a
/// snapshot (a read-only `REPEATABLE READ` transaction) has been taken, the comparison then reads
/// that snapshot while both generations move on. `None` when `name` did not catch up within
/// [`FREEZE_LIMIT`]. The frozen time is added to `spent`.
async fn compare_on_snapshot(
    pool: &Pool,
    topic: &str,
    name: &str,
    spent: &mut Duration,
) -> anyhow::Result<Option<Compared>> {
    let mut client = pool.get().await?;
    let (old, old_version): (String, i32) = {
        let row = client
            .query_one(
                "SELECT name, code_version FROM projection.generations WHERE state = 'active'",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    if old_version != PROJECTION_VERSION {
        return Ok(Some(Compared {
            old,
            comparison: None,
            took: None,
            old_version,
            at_snapshot: None,
        }));
    }
    let mut reader = pool.get().await?;
    let Some(freeze) = Freeze::catch_up(&mut client, topic, name, spent).await? else {
        return Ok(None);
    };
    let snapshot = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // The snapshot is taken by its first query, made while both generations are frozen at the
    // same offsets (the new one never goes past the active one's).
    let differing = verify::differing_partitions(&snapshot, topic, &freeze.old, name).await?;
    let at_snapshot = applied_events(&snapshot, topic, &freeze.old).await?;
    let old = freeze.old.clone();
    freeze.release(spent).await?;
    if differing != 0 {
        tracing::warn!(
            differing,
            "the snapshot saw the generations at different offsets"
        );
        return Ok(None);
    }
    let started = Instant::now();
    let comparison = verify::compare(&snapshot, &old, name).await?;
    let took = started.elapsed();
    snapshot.rollback().await?;
    Ok(Some(Compared {
        old,
        comparison: Some(comparison),
        took: Some(took),
        old_version,
        at_snapshot: Some(at_snapshot),
    }))
}

/// How many events of `topic` generation `name` has applied (the sum of its stored offsets).
async fn applied_events(
    client: &impl deadpool_postgres::GenericClient,
    topic: &str,
    name: &str,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection.offsets
             WHERE generation = $1 AND topic = $2",
            &[&name, &topic],
        )
        .await?
        .get(0))
}

/// Freezes the active generation again, lets `name` reach its offsets (the events the live
/// projector applied since the comparison), stops projecting into `name`, and in the same
/// transaction retires `old` and activates `name`: how many events `old` had applied then.
/// `None` when `name` did not catch up within [`FREEZE_LIMIT`] (nothing changed). The frozen
/// time is added to `spent`.
async fn switch(
    pool: &Pool,
    topic: &str,
    name: &str,
    old: &str,
    consuming: &mut Consuming,
    spent: &mut Duration,
) -> anyhow::Result<Option<i64>> {
    let mut client = pool.get().await?;
    let Some(freeze) = Freeze::catch_up(&mut client, topic, name, spent).await? else {
        return Ok(None);
    };
    anyhow::ensure!(
        freeze.old == old,
        "the active generation changed from {old} to {} during the rebuild; not switching",
        freeze.old
    );
    if let Some((stop, task)) = consuming.take() {
        let _ = stop.send(());
        task.await.context("the rebuild's consumer failed")?;
    }
    let tx = &freeze.tx;
    let at_switch = applied_events(tx, topic, old).await?;
    tx.execute(
        "UPDATE projection.generations SET state = 'retired', retired_at = now() WHERE name = $1",
        &[&old],
    )
    .await?;
    tx.execute(
        "UPDATE projection.generations SET state = 'active', activated_at = now() WHERE name = $1",
        &[&name],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &activation_payload(name)],
    )
    .await?;
    let since = freeze.since;
    freeze.tx.commit().await?;
    *spent += since.elapsed();
    Ok(Some(at_switch))
}

/// Progress for people: a bar on a terminal, a log line every few seconds otherwise.
struct Report {
    bar: Option<ProgressBar>,
    last_line: std::sync::Mutex<Instant>,
}

impl Report {
    fn new() -> Report {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} events, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Report {
            bar,
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn show(&self, gap: &Gap) {
        let built = u64::try_from(gap.built).unwrap_or(0);
        let target = u64::try_from(gap.target).unwrap_or(0);
        if let Some(bar) = &self.bar {
            bar.set_length(target.max(built));
            bar.set_position(built);
            return;
        }
        let mut last = self
            .last_line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            tracing::info!(built, target, behind = gap.behind, "rebuild progress");
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
