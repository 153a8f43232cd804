//! `projector rebuild`: a new generation of every read model from offset 0, built while the
//! active generation keeps serving, verified, then switched to atomically.
//!
//! 1. Take the rebuild lock (a session advisory lock: two rebuilds at once are refused).
//! 2. Create a `building` generation and project every partition into it from offset 0, never
//!    past the active generation's stored offsets (workers hold what lies beyond).
//! 3. Once it is close behind, freeze the active generation (`FOR UPDATE` on its row, which
//!    live batches take `FOR SHARE`), let the new one reach exactly the same offsets, stop.
//! 4. If both were built by the same projection code, compare them table by table; refuse to
//!    switch on a difference unless `--accept-diff`.
//! 5. In the same transaction, retire the old generation and activate the new one, and notify
//!    the APIs. The live projector's next batch goes to the new generation, at the same offsets.

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
/// when the switch begins; the active one is frozen while the new one closes that gap.
const CLOSE_ENOUGH: i64 = 2_000;

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
        match switch(&pool, &topic, &name, accept_diff, &mut consuming).await? {
            Some(old) => break old,
            None => tracing::info!("not caught up within the freeze limit; trying again"),
        }
    };
    report.finish();
    tokio::task::spawn_blocking(move || drop(events)).await?;
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

/// Freezes the active generation, lets `name` reach its offsets, verifies and switches.
/// `None` when `name` did not catch up within [`FREEZE_LIMIT`] (nothing changed).
async fn switch(
    pool: &Pool,
    topic: &str,
    name: &str,
    accept_diff: bool,
    consuming: &mut Consuming,
) -> anyhow::Result<Option<String>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
    let row = tx
        .query_one(
            "SELECT name, code_version FROM projection.generations WHERE state = 'active' FOR UPDATE",
            &[],
        )
        .await
        .context("cannot freeze the active generation")?;
    let (old, old_version): (String, i32) = (row.get(0), row.get(1));
    let frozen = Instant::now();
    loop {
        let gap = Gap::measure(&tx, name, topic).await?;
        if gap.behind == 0 {
            break;
        }
        if frozen.elapsed() > FREEZE_LIMIT {
            tx.rollback().await?;
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some((stop, task)) = consuming.take() {
        let _ = stop.send(());
        task.await.context("the rebuild's consumer failed")?;
    }

    if old_version == PROJECTION_VERSION {
        let comparison = verify::compare(&tx, &old, name).await?;
        print!("{comparison}");
        if !comparison.identical() && !accept_diff {
            tx.rollback().await?;
            bail!(
                "generation {name} differs from {old}, built by the same projection code; not \
                 switching. Inspect it with `projector verify {old} {name}`, drop it with \
                 `projector generations drop {name}`, or rebuild with --accept-diff"
            );
        }
    } else {
        println!(
            "{old} was built by projection code v{old_version}, {name} by v{PROJECTION_VERSION}: \
             not compared"
        );
    }
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
    tx.commit().await?;
    Ok(Some(old))
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
