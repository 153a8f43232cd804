//! Fault injection with real processes: the projector SIGKILLed again and again while a large
//! log flows in, checked against a clean replay of the same log; the command API SIGKILLed
//! with requests in flight, checked command by command; PostgreSQL, and the broker, stopped and
//! started under reads and writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chronicle_tests::workload;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::broker::KafkaCluster;
use crate::harness::{Rng, TestApp, TestUser, scratch_dir};
use crate::postgres::PrivatePostgres;

const EVENTS: usize = 100_000;
const KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_20_times_while_100k_events_flow_equals_a_clean_replay() {
    // Arrange: a broker of its own (the shared one would have to serve this load and every
    // other test's group heartbeats), and a user whose profile updates probe that a projector
    // is applying events.
    let name = format!("broker-{}", uuid::Uuid::now_v7().simple());
    let broker = tokio::task::spawn_blocking(move || KafkaCluster::single(&scratch_dir(), &name))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let app = Arc::new(
        TestApp::builder()
            .partitions(12)
            .broker(&broker.address())
            .spawn()
            .await,
    );
    let mut rng = Rng::for_test();
    println!(
        "fault test seed {:#x}, logs in {}",
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
        // Kill at an arbitrary moment: while the projector applies events, and also while a
        // projector that has just started is still joining the group. The probes, each a
        // profile update, are checked once everything has been applied.
        let probe = app
            .update_profile(&prober.token, json!({ "bio": format!("probe {round}") }))
            .await;
        probe.assert_status(202);
        probes.push(probe.str_field("position"));
        // This sleep times the fault; nothing waits on it for a read.
        tokio::time::sleep(rng.millis_between(0, 1500)).await;
        app.kill_projector();
        app.start_projector().await;
    }
    let produced = generator
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .expect("failed to write the workload");
    app.wait_for_offsets(&produced.ends, Duration::from_secs(240))
        .await;
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

/// Publishes `key` as a post's body with `Idempotency-Key: key`; the post id and position if
/// answered 202, `None` if the command API could not be reached or answered 503.
async fn publish_once(app: &TestApp, writer: &TestUser, key: &str) -> Option<(String, String)> {
    let request = app
        .command(Method::POST, "/v1/posts")
        .bearer_auth(&writer.token)
        .header("Idempotency-Key", key)
        .json(&json!({ "body": key }));
    let response = request.send().await.ok()?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.ok()?;
    match status.as_u16() {
        202 => Some((
            body["post_id"].as_str()?.to_owned(),
            body["position"].as_str()?.to_owned(),
        )),
        503 => None,
        other => panic!("publishing {key}: unexpected {other} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn command_api_killed_with_requests_in_flight_loses_and_doubles_no_command() {
    // Arrange: writers who publish as fast as they can, each post with its own key.
    let app = Arc::new(TestApp::spawn().await);
    let mut rng = Rng::for_test();
    let writers: Vec<TestUser> = join_all((0..8).map(|i| {
        let app = app.clone();
        async move { app.register_user(&format!("writer_{i}"), "Writer").await }
    }))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = writers
        .iter()
        .map(|writer| {
            let (app, writer, stop) = (app.clone(), writer.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut outcomes, mut interrupted) = (Vec::new(), 0);
                while !stop.load(Ordering::SeqCst) {
                    // Like a real client: what got no answer is retried with the same key.
                    let key = format!("{}-{}", writer.handle, outcomes.len());
                    let mut answer = publish_once(&app, &writer, &key).await;
                    if answer.is_none() {
                        interrupted += 1;
                    }
                    while answer.is_none() && !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        answer = publish_once(&app, &writer, &key).await;
                    }
                    outcomes.push((key, answer));
                }
                (writer, outcomes, interrupted)
            })
        })
        .collect();

    // Act: SIGKILL the command API under that load, start it again, let the load go on.
    // These sleeps time the fault; nothing waits on them for a read.
    tokio::time::sleep(rng.millis_between(300, 800)).await;
    app.kill_command_api();
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.start_command_api().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    // What is still unanswered is retried once the load has stopped.
    let mut interrupted = 0;
    for (writer, outcomes, count) in &mut results {
        interrupted += *count;
        for (key, answer) in outcomes.iter_mut().filter(|(_, a)| a.is_none()) {
            for _ in 0..20 {
                *answer = publish_once(&app, writer, key).await;
                if answer.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert!(answer.is_some(), "{key} was never answered");
        }
    }

    // Assert: the kill hit requests in flight...
    assert!(interrupted > 0, "the kill interrupted no request");
    let positions: Vec<String> = results
        .iter()
        .flat_map(|(_, outcomes, _)| outcomes.iter())
        .filter_map(|(_, answer)| answer.as_ref().map(|(_, position)| position.clone()))
        .collect();
    app.wait_for(&positions).await;
    // ...every command is in the read models, each once (reads after the wait see it all).
    let mut commands = 0;
    for (writer, outcomes, _) in &results {
        commands += outcomes.len();
        let profile = app.get_user(&writer.id, &[]).await;
        assert_eq!(
            profile.u64_field("post_count"),
            outcomes.len() as u64,
            "{}: {} commands",
            writer.handle,
            outcomes.len()
        );
        for (key, answer) in outcomes {
            let (post_id, _) = answer.as_ref().expect("answered");
            let post = app.get_post(post_id, &[]).await;
            post.assert_status(200);
            assert_eq!(post.str_field("body"), *key);
        }
    }
    println!("{commands} commands, {interrupted} interrupted by the kill and retried");
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_is_503_database_unavailable_then_everything_recovers() {
    // Arrange: Chronicle on a private PostgreSQL server, a user with a post.
    let name = format!("pg-{}", uuid::Uuid::now_v7().simple());
    let pg = Arc::new(
        tokio::task::spawn_blocking(move || PrivatePostgres::start(&scratch_dir(), &name))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
    );
    let app = Arc::new(
        TestApp::builder()
            .database_server(&pg.admin_url())
            .spawn()
            .await,
    );
    let writer = app.register_user("writer", "Writer").await;
    let first = app.publish_post(&writer, "before the outage").await;
    app.wait_for(&[writer.position.clone(), first.position.clone()])
        .await;

    // Act: a reader and a writer go on while the database stops for a while and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (app, stop, id) = (app.clone(), stop.clone(), writer.id.clone());
        async move {
            let mut answers: Vec<(u16, Option<String>)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let resp = app.get_user(&id, &[]).await;
                answers.push((resp.status.as_u16(), resp.code().map(str::to_owned)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }
    });
    let publisher = tokio::spawn({
        let (app, stop, writer) = (app.clone(), stop.clone(), writer.clone());
        async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let resp = app.publish(&writer.token, &format!("post {n}")).await;
                match resp.status.as_u16() {
                    202 => acknowledged.push(resp.str_field("position")),
                    503 => {}
                    other => panic!("publishing: unexpected {other}: {resp}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        }
    });
    // These sleeps time the fault; nothing waits on them for a read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outage = Instant::now();
    let server = pg.clone();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = pg.clone();
    tokio::task::spawn_blocking(move || server.start_again())
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let outage = outage.elapsed();
    // Recovery by itself: reads answer again, without any restart of ours.
    let recovered = Instant::now();
    while app.get_user(&writer.id, &[]).await.status != 200 {
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "query-api did not recover within 30 s of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = recovered.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = reader
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let acknowledged = publisher
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    // Assert: during the outage reads were 503 database_unavailable, never anything else...
    let unavailable = answers
        .iter()
        .filter(|(status, code)| *status == 503 && code.as_deref() == Some("database_unavailable"))
        .count();
    assert!(unavailable > 0, "no read saw the outage: {answers:?}");
    assert!(
        answers.iter().all(|(status, code)| *status == 200
            || (*status == 503 && code.as_deref() == Some("database_unavailable"))),
        "{answers:?}"
    );
    // ...and the projector resumed from its stored offsets: every acknowledged post counts once.
    app.wait_for_within(&acknowledged, Duration::from_secs(60))
        .await;
    let profile = app.get_user(&writer.id, &[]).await;
    assert_eq!(
        profile.u64_field("post_count"),
        acknowledged.len() as u64 + 1,
        "{profile}"
    );
    println!(
        "outage {outage:?}, reads answered again {recovery:?} after; {} reads ({unavailable} 503), \
         {} posts acknowledged",
        answers.len(),
        acknowledged.len()
    );
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_is_503_then_every_acknowledged_command_lands() {
    // Arrange: Chronicle on a private broker, waiting at most 2 s for an acknowledgement, with
    // its idempotent producer (as always): it must survive the broker's restart.
    let name = format!("broker-{}", uuid::Uuid::now_v7().simple());
    let mut broker =
        tokio::task::spawn_blocking(move || KafkaCluster::single(&scratch_dir(), &name))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let app = Arc::new(
        TestApp::builder()
            .broker(&broker.address())
            .env("CHRONICLE_PRODUCE_TIMEOUT_MS", "2000")
            .spawn()
            .await,
    );
    let writer = app.register_user("writer", "Writer").await;
    app.wait_for(std::slice::from_ref(&writer.position)).await;

    // Act: a writer goes on while the broker stops for a while and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (app, stop, writer) = (app.clone(), stop.clone(), writer.clone());
        async move {
            // Refused for sure (broker_unavailable) and maybe taken (outcome_unknown).
            let (mut acknowledged, mut unavailable, mut unknown) = (Vec::new(), 0, 0);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let resp = app.publish(&writer.token, &format!("post {n}")).await;
                match (resp.status.as_u16(), resp.code()) {
                    (202, _) => acknowledged.push(resp.str_field("position")),
                    (503, Some("broker_unavailable")) => unavailable += 1,
                    (503, Some("outcome_unknown")) => {
                        assert!(
                            resp.body["idempotency_key"].is_string(),
                            "outcome_unknown without the key to retry with: {resp}"
                        );
                        unknown += 1;
                    }
                    _ => panic!("publishing: unexpected {resp}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acknowledged, unavailable, unknown)
        }
    });
    // These sleeps time the fault; nothing waits on them for a read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker_down = Instant::now();
    broker = tokio::task::spawn_blocking(move || {
        broker.stop();
        std::thread::sleep(Duration::from_secs(5));
        broker.start_again();
        broker
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let outage = broker_down.elapsed();
    // Recovery by itself: commands are acknowledged again.
    let recovered = Instant::now();
    let after_outage = loop {
        let resp = app.publish(&writer.token, "after the outage").await;
        if resp.status == 202 {
            break resp.str_field("position");
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(60),
            "command-api did not recover within 60 s of the broker's return: {resp}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery = recovered.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (acknowledged, unavailable, unknown) = publisher
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    // Assert: commands during the outage were refused as such...
    assert!(unavailable + unknown > 0, "no command saw the outage");
    // ...and every acknowledged one is in the read models, once (the one that saw the
    // recovery too).
    let mut positions = acknowledged.clone();
    positions.push(after_outage);
    app.wait_for_within(&positions, Duration::from_secs(90))
        .await;
    let profile = app.get_user(&writer.id, &[]).await;
    let posts = profile.u64_field("post_count");
    // The command that saw the recovery is acknowledged too; one answered outcome_unknown
    // may still have landed (the broker may have taken it), one refused as broker_unavailable
    // never does.
    assert!(posts > acknowledged.len() as u64, "{profile}");
    assert!(
        posts <= acknowledged.len() as u64 + 1 + unknown,
        "more posts than commands that may have landed: {profile}"
    );
    println!(
        "outage {outage:?}, commands acknowledged again {recovery:?} after; {} acknowledged, \
         {unavailable} refused (broker_unavailable), {unknown} outcome_unknown, {posts} posts",
        acknowledged.len()
    );
    app.assert_services_alive();
    drop(broker);
}
