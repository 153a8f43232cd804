//! Fault injection with real processes: the projector SIGKILLed again and again while a large
//! log flows in, checked against a clean replay of the same log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_tests::workload;
use serde_json::json;

use crate::harness::{Rng, TestApp};

const EVENTS: usize = 100_000;
const KILLS: usize = 20;

/// Blocks until the active generation's stored offsets reach `ends` (per partition, the offset
/// after the last message), within `deadline`.
async fn wait_for_offsets(app: &TestApp, ends: &HashMap<i32, i64>, deadline: Duration) {
    let db = app.db().await;
    let started = Instant::now();
    loop {
        let stored: HashMap<i32, i64> = db
            .query(
                "SELECT o.partition, o.next_offset FROM projection.offsets o
                 JOIN projection.generations g ON g.name = o.generation AND g.state = 'active'
                 WHERE o.topic = $1",
                &[&app.topic],
            )
            .await
            .expect("failed to read the stored offsets")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let behind: Vec<(i32, i64)> = ends
            .iter()
            .filter(|(partition, end)| stored.get(partition).copied().unwrap_or(0) < **end)
            .map(|(partition, end)| {
                (
                    *partition,
                    *end - stored.get(partition).copied().unwrap_or(0),
                )
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "the projector did not reach the end of the log within {}s; behind: {behind:?} \
             (service logs: {})",
            deadline.as_secs(),
            app.log_dir().display()
        );
        // Polling the stored offsets: what is waited for is a position, not a time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_20_times_while_100k_events_flow_equals_a_clean_replay() {
    // Arrange: a user whose profile updates probe that a projector is applying events.
    let app = Arc::new(TestApp::builder().partitions(12).spawn().await);
    let mut rng = Rng::from_entropy();
    println!(
        "fault test rng state {:#x}, logs in {}",
        rng.state(),
        app.log_dir().display()
    );
    let prober = app.register_user("prober", "Prober").await;

    // Act: 100k events written straight to the topic while the projector is killed 20 times.
    let generator = tokio::spawn({
        let (brokers, topic) = (app.kafka_brokers.clone(), app.topic.clone());
        async move { workload::generate(&brokers, &topic, EVENTS).await }
    });
    let mut probes = Vec::new();
    for round in 0..KILLS {
        // Kill only a projector that owns its partitions and is applying events: tansu 0.6
        // keeps a member killed in the middle of joining the group as a zombie that holds its
        // partitions for good. The probe's position proves the projector joined and applies.
        let probe = app
            .update_profile(&prober.token, json!({ "bio": format!("probe {round}") }))
            .await;
        probe.assert_status(202);
        probes.push(probe.str_field("position"));
        app.wait_for_within(&probes[round..], Duration::from_secs(120))
            .await;
        // This sleep times the fault; nothing waits on it for a read.
        tokio::time::sleep(rng.millis_between(100, 800)).await;
        app.kill_projector();
        app.start_projector().await;
    }
    let produced = generator
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .expect("failed to write the workload");
    wait_for_offsets(&app, &produced.ends, Duration::from_secs(240)).await;
    app.wait_for_within(&probes, Duration::from_secs(60)).await;

    // Assert: every event of the log applied once: as many event ids recorded as messages in
    // the log, no dead letters...
    let db = app.db().await;
    let log_size: i64 = db
        .query_one(
            "SELECT sum(o.next_offset)::bigint FROM projection.offsets o
             JOIN projection.generations g ON g.name = o.generation AND g.state = 'active'
             WHERE o.topic = $1",
            &[&app.topic],
        )
        .await
        .expect("failed to sum the stored offsets")
        .get(0);
    let applied: i64 = db
        .query_one("SELECT count(*) FROM read_g1.applied_events", &[])
        .await
        .expect("failed to count applied events")
        .get(0);
    let dead: i64 = db
        .query_one("SELECT count(*) FROM projection.dead_letters", &[])
        .await
        .expect("failed to count dead letters")
        .get(0);
    assert_eq!(dead, 0);
    assert_eq!(applied, log_size);
    assert!(
        applied > i64::try_from(EVENTS).unwrap_or(i64::MAX),
        "{applied}"
    );
    // ...and the read models equal a clean replay of the whole log: the rebuild compares every
    // table's row count and checksum with the live generation and fails on a difference.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    println!(
        "{} events in the log, projector killed {KILLS} times\n{out}",
        produced.events
    );
    app.assert_services_alive();
}
