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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_tests::bench::{
    Fixture, Measure, PARTITIONS, Result, report, spawn, wait_until_projected,
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

    // The live projector catches up (it must: a rebuild never gets ahead of it). Its rate is
    // taken from its first committed batch to its last: start-up, migrations and joining the
    // consumer group (tansu holds a joining member about 3 s) are not applying events.
    let started = Instant::now();
    let mut live = spawn(&projector, &[], &service_env)?;
    let (db, connection) = tokio_postgres::connect(&database_url, NoTls).await?;
    tokio::spawn(connection);
    let first = wait_until_projected(&db, 1).await?;
    let applying = Instant::now();
    let startup_secs = started.elapsed().as_secs_f64();
    wait_until_projected(&db, produced as i64).await?;
    let live_secs = applying.elapsed().as_secs_f64();
    let live_rate = (produced as f64 - first as f64) / live_secs;

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
    let (consumer_rate, copy_rate, rebuild_rate) =
        (rate(consume_secs), rate(copy_secs), rate(rebuild_secs));
    let measures = [
        Measure {
            name: "projector rebuild (whole command, verify included), vs the slower of a bare consumer and COPY",
            value: rebuild_rate,
            baseline: Some(consumer_rate.min(copy_rate)),
            unit: "events/s",
            goal: ">= 0.8",
        },
        Measure {
            name: "projector, live: events/s applied, vs binary COPY of the same rows",
            value: live_rate,
            baseline: Some(copy_rate),
            unit: "events/s",
            goal: ">= 0.5",
        },
    ];
    let notes = [
        format!(
            "{events} events ({rows} rows in the read models), {PARTITIONS} partitions; produced in {produce_secs:.1} s"
        ),
        format!(
            "bare consumer (every event read from the broker): {consume_secs:.1} s, {consumer_rate:.0} events/s; binary COPY of the rows the rebuild wrote, into empty tables with their indexes: {copy_secs:.1} s, {copy_rate:.0} events/s"
        ),
        format!(
            "projector rebuild: {rebuild_secs:.1} s; live projector: first batch committed {startup_secs:.1} s after start (not counted), then {} events in {live_secs:.1} s",
            produced as i64 - first
        ),
    ];
    report(&format!("replay, {events} events"), &measures, &notes)?;

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
