//! History: `projector rebuild` builds a new generation from the whole log while the services
//! keep serving, verifies it and switches to it; `generations` and `verify` manage them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
