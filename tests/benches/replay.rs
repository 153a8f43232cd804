//! The replay benchmark: how fast does `projector rebuild` fold the whole log into a new
//! generation, next to the two things it cannot beat, measured in the same run on the same
//! broker and database:
//!
//! - reading the same events from the broker with a bare rdkafka consumer, and
//! - writing the resulting rows to Postgres with binary `COPY`.
//!
//! A generator first writes N realistic events straight to a fresh topic: users, a follow graph,
//! posts by Zipf-distributed authors, Zipf-distributed likes, a few percent unlikes, deletes and
//! profile updates. The live projector then projects them (timed too, for reference), and the
//! rebuild builds generation g2 from offset 0. The table is printed and appended to
//! BENCHMARKS.md. Run it with `script/bench replay [N]` (default 1,000,000).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_tests::bench::{
    Fixture, PARTITIONS, Result, append_to_benchmarks, spawn, wait_until_projected,
};
use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_postgres::NoTls;

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

    // The live projector catches up (it must: a rebuild never gets ahead of it).
    let started = Instant::now();
    let mut live = spawn(&projector, &[], &service_env)?;
    let (db, connection) = tokio_postgres::connect(&database_url, NoTls).await?;
    tokio::spawn(connection);
    wait_until_projected(&db, produced as i64).await?;
    let live_secs = started.elapsed().as_secs_f64();

    // Baseline 1: the same events read by a bare consumer.
    let started = Instant::now();
    let consumed = consume_all(&brokers, &topic).await?;
    let consume_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        consumed, produced,
        "the bare consumer read {consumed} of {produced}"
    );

    // The rebuild.
    let started = Instant::now();
    let output = Command::new(&projector)
        .arg("rebuild")
        .envs(service_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()?;
    let rebuild_secs = started.elapsed().as_secs_f64();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        return Err(format!(
            "the rebuild failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let _ = live.kill();
    let _ = live.wait();

    // Baseline 2: the rows the rebuild wrote, written again with binary COPY.
    let (rows, copy_secs) = copy_rows(&db, "read_g2").await?;

    let rate = |secs: f64| produced as f64 / secs;
    let slower_baseline = rate(consume_secs).min(rate(copy_secs));
    let measures = [
        (
            "bare consumer: read every event from the broker",
            consume_secs,
        ),
        ("binary COPY: write the resulting rows", copy_secs),
        (
            "projector rebuild (whole command, verify included)",
            rebuild_secs,
        ),
        (
            "live projector catching up (start-up and group join included)",
            live_secs,
        ),
    ];
    let mut table = String::new();
    writeln!(
        table,
        "| measure | seconds | events/s | ratio to the slower baseline |"
    )?;
    writeln!(table, "|---|---:|---:|---:|")?;
    for (name, secs) in measures {
        writeln!(
            table,
            "| {name} | {secs:.1} | {:.0} | {:.2} |",
            rate(secs),
            rate(secs) / slower_baseline
        )?;
    }
    let summary = format!(
        "{events} events ({rows} rows in the read models), {PARTITIONS} partitions; produced in \
         {produce_secs:.1} s. Goal: rebuild >= 0.8 of the slower baseline: {}.",
        if rate(rebuild_secs) >= 0.8 * slower_baseline {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("\n{table}\n{summary}");
    append_to_benchmarks(&format!("replay, {events} events"), &table, &summary)?;

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
