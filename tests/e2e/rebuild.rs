//! History: `projector rebuild` builds a new generation from the whole log while the services
//! keep serving, verifies it and switches to it; `generations` and `verify` manage them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chronicle_tests::workload;

use crate::crash::seed;
use crate::harness::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_under_traffic_fails_no_request_and_no_read_goes_backwards() {
    // Arrange: some history, then a writer and a reader that never stop during the rebuild.
    let app = Arc::new(TestApp::spawn().await);
    let (users, posts) = seed(&app, 6, 20).await;
    let writer = users[0].clone();
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let writing = tokio::spawn({
        let (app, done, failures, writer) =
            (app.clone(), done.clone(), failures.clone(), writer.clone());
        async move {
            let mut published = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let resp = app
                    .publish(&writer.token, &format!("during the rebuild {n}"))
                    .await;
                if resp.status.as_u16() == 202 {
                    published.push((resp.str_field("post_id"), resp.str_field("position")));
                } else {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("publish: {resp}"));
                }
            }
            published
        }
    });
    let reading = tokio::spawn({
        let (app, done, failures, writer) =
            (app.clone(), done.clone(), failures.clone(), writer.clone());
        let seeded: Vec<String> = posts.iter().map(|p| p.id.clone()).collect();
        async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut last_count = 0;
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                reads += 1;
                let profile = app.get_user(&writer.id, &[]).await;
                if profile.status.as_u16() != 200 {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("profile: {profile}"));
                    continue;
                }
                let count = profile.u64_field("post_count");
                if count < last_count {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("post_count went back from {last_count} to {count}"));
                }
                last_count = count;
                let feed = app
                    .get(&format!("/v1/users/{}/posts?limit=100", writer.id), &[])
                    .await;
                if feed.status.as_u16() != 200 {
                    failures.lock().expect("lock").push(format!("feed: {feed}"));
                    continue;
                }
                let ids: HashSet<String> = feed.body["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|p| p["post_id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                // The writer's seed posts are the oldest: still there once seen, page after page.
                for id in seeded.iter().filter(|id| seen.contains(*id)) {
                    if !ids.contains(id) && ids.len() < 100 {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("post {id} vanished from the feed"));
                    }
                }
                seen.extend(ids);
            }
            reads
        }
    });

    // Act
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    // Keep the traffic up a little past the switch, through the new generation.
    let after = app.publish_post(&writer, "after the switch").await;
    app.wait_for(std::slice::from_ref(&after.position)).await;
    done.store(true, Ordering::SeqCst);
    let published = writing.await.expect("writer");
    let reads = reading.await.expect("reader");

    // Assert
    println!(
        "{out}{} writes and {reads} reads during the rebuild",
        published.len()
    );
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    assert!(out.contains("generation g2 is active"), "{out}");
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        published.len() > 5 && reads > 5,
        "too little traffic: {} writes, {reads} reads",
        published.len()
    );
    // Every post acknowledged during the rebuild is in the new generation.
    let positions: Vec<String> = published
        .iter()
        .map(|(_, p)| p.clone())
        .chain([writer.position.clone()])
        .collect();
    let profile = app.get_user(&writer.id, &positions).await;
    assert_eq!(
        profile.u64_field("post_count") as usize,
        20 + published.len() + 1
    );
    for (id, _) in &published {
        app.get_post(id, &positions).await.assert_status(200);
    }

    // The old generation stays until dropped; the active one cannot be dropped.
    let (_, list, _) = app.projector_cli(&["generations", "list"]).await;
    assert!(
        list.contains("g1\tretired") && list.contains("g2\tactive"),
        "{list}"
    );
    let (ok, _, err) = app.projector_cli(&["generations", "drop", "g2"]).await;
    assert!(!ok && err.contains("active"), "{err}");
    let (ok, _, err) = app.projector_cli(&["generations", "drop", "g1"]).await;
    assert!(ok, "{err}");
    let (_, list, _) = app.projector_cli(&["generations", "list"]).await;
    assert!(!list.contains("g1"), "{list}");
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_rebuild_is_refused_and_verify_compares_generations() {
    // Arrange
    let app = TestApp::spawn().await;
    let (_, _) = seed(&app, 3, 3).await;

    // Act: a rebuild while another one holds the rebuild lock (as a running rebuild does),
    // then once it is free.
    let db = app.db().await;
    db.execute(
        "SELECT pg_advisory_lock(hashtext('chronicle.rebuild'))",
        &[],
    )
    .await
    .expect("take the rebuild lock");
    let refused = app.projector_cli(&["rebuild"]).await;
    db.execute(
        "SELECT pg_advisory_unlock(hashtext('chronicle.rebuild'))",
        &[],
    )
    .await
    .expect("release the rebuild lock");
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;

    // Assert
    assert!(!refused.0, "a second rebuild was not refused: {refused:?}");
    assert!(
        refused.2.contains("another rebuild is running"),
        "{refused:?}"
    );
    assert!(rebuilt, "{out}\n{err}");

    // The retired and the active generation are at the same offsets with nothing new: equal.
    let (ok, out, err) = app.projector_cli(&["verify", "g1", "g2"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("g1 and g2 hold the same read models"), "{out}");
    let (ok, _, err) = app.projector_cli(&["verify", "g1", "g9"]).await;
    assert!(!ok && err.contains("no such generation"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_a_difference_whichever_generation_comes_first() {
    // Arrange: two identical generations (a rebuild with nothing new since).
    let app = TestApp::spawn().await;
    let (_, _) = seed(&app, 3, 3).await;
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "{out}\n{err}");
    let db = app.db().await;

    // Act 1: g1 loses the offset row of a partition it had projected, as if it had never
    // seen that partition; g2 still has it.
    let (partition, offset): (i32, i64) = db
        .query_one(
            "SELECT partition, next_offset FROM projection.offsets
             WHERE generation = 'g1' AND topic = $1 AND next_offset > 0
             ORDER BY partition LIMIT 1",
            &[&app.topic],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .expect("a partition g1 projected");
    db.execute(
        "DELETE FROM projection.offsets WHERE generation = 'g1' AND topic = $1 AND partition = $2",
        &[&app.topic, &partition],
    )
    .await
    .expect("delete g1's offset row");
    let first = app.projector_cli(&["verify", "g1", "g2"]).await;
    let second = app.projector_cli(&["verify", "g2", "g1"]).await;

    // Assert 1: both orders see the partition only g2 has.
    for (order, (ok, out, err)) in [("g1 g2", &first), ("g2 g1", &second)] {
        assert!(
            !ok,
            "verify {order} missed the partition in one generation only:\n{out}"
        );
        assert!(
            err.contains("different offsets in 1 partitions"),
            "verify {order}: {err}"
        );
    }

    // Act 2: the offsets agree again, but g1 lacks a row of g2 (and has one g2 lacks).
    db.execute(
        "INSERT INTO projection.offsets (generation, topic, partition, next_offset)
         VALUES ('g1', $1, $2, $3)",
        &[&app.topic, &partition, &offset],
    )
    .await
    .expect("restore g1's offset row");
    let (ok, out, err) = app.projector_cli(&["verify", "g1", "g2"]).await;
    assert!(
        ok,
        "restored, the generations should be equal:\n{out}\n{err}"
    );
    let handle: String = db
        .query_one(
            "DELETE FROM read_g1.users WHERE user_id =
                 (SELECT user_id FROM read_g1.users ORDER BY handle LIMIT 1)
             RETURNING handle",
            &[],
        )
        .await
        .expect("delete a user of g1")
        .get(0);
    db.execute(
        "INSERT INTO read_g1.follows (follower_id, followee_id, followed_at)
         SELECT a.user_id, b.user_id, now() FROM read_g1.users a, read_g1.users b
         WHERE a.user_id <> b.user_id LIMIT 1",
        &[],
    )
    .await
    .expect("add a follow to g1");
    let first = app.projector_cli(&["verify", "g1", "g2"]).await;
    let second = app.projector_cli(&["verify", "g2", "g1"]).await;

    // Assert 2: both orders report both tables, and the rows on the side they are on.
    for (order, (ok, out, _)) in [("g1 g2", &first), ("g2 g1", &second)] {
        assert!(!ok, "verify {order} found no difference:\n{out}");
        for table in ["users", "follows"] {
            assert!(
                out.lines()
                    .any(|line| line.starts_with(table) && line.ends_with("DIFFERENT")),
                "verify {order}: {table} not reported:\n{out}"
            );
        }
    }
    let only_g2_user = |out: &str| {
        out.lines()
            .any(|line| line.contains("only in g2") && line.contains(&handle))
    };
    assert!(only_g2_user(&first.1), "{}", first.1);
    assert!(only_g2_user(&second.1), "{}", second.1);
}

/// The number right after `label` in `text`.
fn millis_after(text: &str, label: &str) -> Option<u128> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_freezes_live_projection_only_briefly_not_for_the_comparison() {
    // Arrange: a log long enough for the comparison to take a while, projected by the live
    // projector, and a writer whose every post is read back at its position meanwhile.
    const EVENTS: usize = 60_000;
    let app = Arc::new(TestApp::spawn().await);
    let produced = workload::generate(&app.kafka_brokers, &app.topic, EVENTS)
        .await
        .expect("failed to write the workload");
    app.wait_for_offsets(&produced.ends, Duration::from_secs(120))
        .await;
    let writer = app.register_user("rebuild_writer", "Writer").await;
    let done = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (app, done, writer) = (app.clone(), done.clone(), writer.clone());
        async move {
            let mut published = Vec::new();
            let mut failures = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let resp = app
                    .publish(&writer.token, &format!("post {}", published.len()))
                    .await;
                if resp.status.as_u16() != 202 {
                    failures.push(format!("publish: {resp}"));
                    continue;
                }
                let (id, position) = (resp.str_field("post_id"), resp.str_field("position"));
                // Its author's registration too: a post is shown with its author, so until
                // the registration (in another partition) is applied the post is not found.
                let read = app
                    .get_post(&id, &[writer.position.clone(), position.clone()])
                    .await;
                if read.status.as_u16() != 200 {
                    failures.push(format!("read at its position: {read}"));
                }
                published.push(position);
            }
            (published, failures)
        }
    });

    // Act
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    done.store(true, Ordering::SeqCst);
    let (published, failures) = traffic.await.expect("traffic");

    // Assert: the rebuild compared and switched, traffic flowed throughout...
    println!(
        "{out}{} posts published during the rebuild",
        published.len()
    );
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("g1 and g2 hold the same read models"), "{out}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        published.len() > 5,
        "too little traffic: {}",
        published.len()
    );
    // ... live projection went on while the generations were compared (holding the freeze
    // through the comparison, as the switch once did, lets it apply nothing meanwhile)...
    let frozen = millis_after(&out, "live projection frozen for ").expect("the frozen time");
    let compared = millis_after(&out, "compared on a snapshot in ").expect("the comparison time");
    let meanwhile = millis_after(&out, "the live projector applied ").expect("the events applied");
    println!("frozen {frozen} ms, compared {compared} ms, {meanwhile} events applied meanwhile");
    assert!(
        meanwhile > 0,
        "the live projector applied nothing between the snapshot and the switch:\n{out}"
    );
    // ... and no event was lost or applied twice across the switch.
    let positions: Vec<String> = published
        .iter()
        .cloned()
        .chain([writer.position.clone()])
        .collect();
    let profile = app.get_user(&writer.id, &positions).await;
    assert_eq!(profile.u64_field("post_count") as usize, published.len());
    let db = app.db().await;
    let (log, applied, dead): (i64, i64, i64) = db
        .query_one(
            "SELECT (SELECT sum(next_offset)::bigint FROM projection.offsets
                     WHERE generation = 'g2' AND topic = $1),
                    (SELECT count(*) FROM read_g2.applied_events),
                    (SELECT count(*) FROM projection.dead_letters)",
            &[&app.topic],
        )
        .await
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .expect("count the events of g2");
    assert_eq!(
        (applied, dead),
        (log, 0),
        "events applied to g2, dead letters"
    );
    app.assert_services_alive();
}
