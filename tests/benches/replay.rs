//! The replay benchmark: how fast does `projector rebuild` fold the whole log into a new
//! generation, next to the two things it cannot beat, measured in the same run on the same
//! broker and database:
//!
//! - writing the resulting rows to Postgres with binary `COPY` (the goal: the rebuild at
//!   0.8x of it or better), and
//! - reading the same events from the broker with a bare rdkafka consumer (reported beside).
//!
//! A generator first writes N realistic events straight to a fresh topic: users, a follow graph,
//! posts by Zipf-distributed authors, Zipf-distributed likes, a few percent unlikes, deletes and
//! profile updates. The live projector then projects them (timed too, against COPY), and the
//! rebuild builds generation g2 from offset 0. The peak memory of both projector processes, the
//! CPU each part of the machine used meanwhile, and the broker's heap are reported too. The
//! table is printed and appended to BENCHMARKS.md. Run it with `script/bench replay [N]`
//! (default 1,000,000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chronicle_tests::bench::{
    CpuUse, Fixture, Goal, Measure, PARTITIONS, Result, broker_memory, log_path, peak_rss_mib,
    spawn, wait_until_projected,
};
use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_postgres::NoTls;

/// What bounds a peak RSS, as far as this benchmark can tell.
const OWN_MEMORY: &str = "the projector process's own memory (VmHWM), while it reads the log \
    faster than it applies it; not broken down further (librdkafka's prefetch queue and fetch \
    buffers, and the per-partition inboxes, are in it)";

#[tokio::main]
async fn main() -> Result<()> {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let fixture = Fixture::create(&format!("replay ({events} events)")).await?;
    let (brokers, topic, database_url, id) = (
        fixture.brokers.clone(),
        fixture.topic.clone(),
        fixture.database_url.clone(),
        fixture.id.clone(),
    );
    let bin_dir = fixture.bin_dir.clone();

    // The log.
    let started = Instant::now();
    let produced = chronicle_tests::workload::generate(&brokers, &topic, events)
        .await?
        .events;
    let produce_secs = started.elapsed().as_secs_f64();
    println!("produced {produced} events in {produce_secs:.1} s");

    let service_env = [
        ("KAFKA_BROKERS", brokers.clone()),
        ("CHRONICLE_TOPIC", topic.clone()),
        ("CHRONICLE_PARTITIONS", PARTITIONS.to_string()),
        ("DATABASE_URL", database_url.clone()),
        ("CHRONICLE_PROJECTOR_GROUP", format!("bench_{id}.projector")),
        ("CHRONICLE_PROJECTOR_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let projector = format!("{bin_dir}/projector");

    // The live projector catches up (it must: a rebuild never gets ahead of it). Its rate is
    // taken from its first committed batch to its last: start-up, migrations and joining the
    // consumer group are not applying events.
    let started = Instant::now();
    let mut live = spawn("projector", &projector, &[], &service_env)?;
    let (db, connection) = tokio_postgres::connect(&database_url, NoTls).await?;
    tokio::spawn(connection);
    let first = wait_until_projected(&db, 1).await?;
    let applying = Instant::now();
    let startup_secs = started.elapsed().as_secs_f64();
    let before = CpuUse::now(&[("projector", live.id())]);
    wait_until_projected(&db, produced as i64).await?;
    let live_secs = applying.elapsed().as_secs_f64();
    let live_cpu = CpuUse::now(&[("projector", live.id())]).since(&before);
    let live_rate = (produced as f64 - first as f64) / live_secs;
    let live_peak = peak_rss_mib(live.id());

    // Baseline 1: the same events read by a bare consumer.
    let started = Instant::now();
    let consumed = consume_all(&brokers, &topic).await?;
    let consume_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        consumed, produced,
        "the bare consumer read {consumed} of {produced}"
    );

    // The rebuild, its peak memory read from /proc while it runs.
    let started = Instant::now();
    let mut rebuild = spawn("projector-rebuild", &projector, &["rebuild"], &service_env)?;
    let before = CpuUse::now(&[("projector rebuild", rebuild.id())]);
    let mut rebuild_peak = None;
    let mut rebuild_cpu = None;
    let status = loop {
        if let Some(peak) = peak_rss_mib(rebuild.id()) {
            rebuild_peak = Some(peak);
            // The last reading before it exits covers the whole rebuild.
            rebuild_cpu = Some(CpuUse::now(&[("projector rebuild", rebuild.id())]).since(&before));
        }
        if let Some(status) = rebuild.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rebuild_secs = started.elapsed().as_secs_f64();
    let rebuild_cpu = rebuild_cpu.unwrap_or_default();
    let log = std::fs::read_to_string(log_path("projector-rebuild")?).unwrap_or_default();
    print!("{log}");
    if !status.success() {
        return Err(format!("the rebuild failed ({status}); its log is above").into());
    }
    // What the rebuild reports of its switch: how long live projection was frozen, and how
    // long the comparison (on a snapshot, not frozen) took.
    let switch_line = log
        .lines()
        .find(|line| line.contains("live projection frozen for "))
        .unwrap_or_default()
        .to_owned();
    let millis_after = |label: &str| -> f64 {
        switch_line
            .find(label)
            .and_then(|at| switch_line[at + label.len()..].split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let frozen_ms = millis_after("live projection frozen for ");
    let compared_ms = millis_after("compared on a snapshot in ");
    let _ = live.kill();
    let _ = live.wait();
    let broker = broker_memory().unwrap_or_default();

    // Baseline 2: the rows the rebuild wrote, written again with binary COPY.
    let (rows, copy_secs) = copy_rows(&db, "read_g2").await?;

    let rate = |secs: f64| produced as f64 / secs;
    let (consumer_rate, copy_rate, rebuild_rate) =
        (rate(consume_secs), rate(copy_secs), rate(rebuild_secs));
    let mut measures = vec![
        Measure::new(
            "projector rebuild, whole command, verify included (baseline: binary COPY of the same rows)",
            rebuild_rate,
            "events/s",
        )
        .against(copy_rate)
        .goal(Goal::AtLeastTimes(0.8))
        .bounded(&rebuild_cpu),
        Measure::new(
            "projector rebuild: live projection frozen at the switch (comparison excluded)",
            frozen_ms,
            "ms",
        )
        .goal(Goal::AtMost(1000.0)),
        Measure::new(
            "projector rebuild (baseline: a bare consumer reading every event)",
            rebuild_rate,
            "events/s",
        )
        .against(consumer_rate),
        Measure::new(
            "live projector catching up, events/s applied (baseline: binary COPY)",
            live_rate,
            "events/s",
        )
        .against(copy_rate)
        .goal(Goal::AtLeastTimes(0.5))
        .bounded(&live_cpu),
        Measure::new(
            "peak RSS: projector, live, catching up",
            live_peak.unwrap_or(f64::NAN),
            "MiB",
        )
        .goal(Goal::AtMost(64.0))
        .bounded_by(OWN_MEMORY),
        Measure::new(
            "peak RSS: projector rebuild",
            rebuild_peak.unwrap_or(f64::NAN),
            "MiB",
        )
        .goal(Goal::AtMost(64.0))
        .bounded_by(OWN_MEMORY),
    ];
    for (name, value) in [
        ("broker (JVM): heap, -Xmx", broker.max_heap),
        ("broker (JVM): heap in use after the load", broker.heap_used),
        ("broker (JVM): peak RSS", broker.peak_rss),
    ] {
        measures.push(Measure::new(name, value.unwrap_or(f64::NAN), "MiB"));
    }
    let notes = [
        format!(
            "{events} events ({rows} rows in the read models), {PARTITIONS} partitions; produced in {produce_secs:.1} s"
        ),
        format!(
            "bare consumer (every event read from the broker): {consume_secs:.1} s, {consumer_rate:.0} events/s; binary COPY of the rows the rebuild wrote, into empty tables with their indexes: {copy_secs:.1} s, {copy_rate:.0} events/s"
        ),
        format!("projector rebuild: {rebuild_secs:.1} s; CPU meanwhile: {rebuild_cpu}"),
        format!(
            "switch (no live traffic during the bench): {frozen_ms:.0} ms frozen, the comparison on a snapshot {compared_ms:.0} ms; the rebuild said: {}",
            switch_line.trim()
        ),
        format!(
            "live projector: first batch committed {startup_secs:.1} s after start (not counted), then {} events in {live_secs:.1} s; CPU meanwhile: {live_cpu}",
            produced as i64 - first
        ),
        format!("broker: {}", broker.summary()),
    ];
    fixture.report(&format!("replay, {events} events"), &measures, &notes)?;

    drop(db);
    fixture.finish().await
}

/// Reads every event of the topic with a bare consumer; returns how many.
async fn consume_all(brokers: &str, topic: &str) -> Result<usize> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}.bench-consumer"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            let (low, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            if high > low {
                remaining.insert(partition, high);
                assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment)?;
        let mut count = 0;
        while !remaining.is_empty() {
            let message = consumer
                .poll(Duration::from_secs(30))
                .ok_or("no events for 30 s")??;
            use rdkafka::message::Message;
            count += 1;
            if remaining
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                remaining.remove(&message.partition());
            }
        }
        Ok(count)
    })
    .await?
}

/// Copies every read-model table of `schema` out, then times writing the rows into empty copies
/// of the tables (indexes included) with binary COPY. Returns (rows, seconds).
async fn copy_rows(db: &tokio_postgres::Client, schema: &str) -> Result<(u64, f64)> {
    const TABLES: &[&str] = &[
        "users",
        "user_counters",
        "posts",
        "post_counters",
        "likes",
        "follows",
        "applied_events",
    ];
    db.batch_execute("CREATE SCHEMA bench_copy").await?;
    let mut dumps = Vec::new();
    for table in TABLES {
        db.batch_execute(&format!(
            "CREATE TABLE bench_copy.{table} (LIKE {schema}.{table} INCLUDING ALL)"
        ))
        .await?;
        let stream = db
            .copy_out(&format!("COPY {schema}.{table} TO STDOUT (FORMAT binary)"))
            .await?;
        let chunks: Vec<bytes::Bytes> = stream
            .map(|c| c.map_err(Box::from))
            .collect::<Vec<Result<_>>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        dumps.push((table, chunks));
    }
    let started = Instant::now();
    let mut rows = 0;
    for (table, chunks) in dumps {
        let sink = db
            .copy_in::<_, bytes::Bytes>(&format!(
                "COPY bench_copy.{table} FROM STDIN (FORMAT binary)"
            ))
            .await?;
        futures_util::pin_mut!(sink);
        for chunk in chunks {
            futures_util::SinkExt::send(&mut sink, chunk).await?;
        }
        rows += sink.finish().await?;
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}
