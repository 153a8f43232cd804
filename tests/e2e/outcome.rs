//! A command whose outcome the broker leaves unknown is answered as such (503 `outcome_unknown`
//! with the Idempotency-Key to retry with), keeps what it reserved, and its retry takes effect
//! exactly once. A definite refusal is still `broker_unavailable` and frees the handle, but only
//! for a first attempt: a retry's refusal leaves the outcome unknown. A registration or an
//! erasure whose client never retries is finished in the background. Keys expire after their
//! lifetime.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::broker::KafkaCluster;
use crate::harness::{NO_POSITIONS, PASSWORD, Resp, TestApp, scratch_dir};

/// Asserts a 503 `outcome_unknown` carrying its key in the header and the body; returns it.
#[track_caller]
fn unknown_outcome_key(resp: &Resp) -> String {
    resp.assert_problem(503, "outcome_unknown");
    assert!(
        resp.header("retry-after").is_some(),
        "no Retry-After: {resp}"
    );
    let key = resp.str_field("idempotency_key");
    assert_eq!(resp.header("idempotency-key"), Some(key.as_str()), "{resp}");
    key
}

/// A one-node broker of this test's own (named after `name`), which it may pause, and Chronicle
/// on it, waiting at most 2 s for an acknowledgement, with `env` on top.
async fn on_a_private_broker(name: &str, env: &[(&str, &str)]) -> (KafkaCluster, TestApp) {
    let name = format!("{name}-{}", uuid::Uuid::now_v7().simple());
    let root = scratch_dir();
    let broker = tokio::task::spawn_blocking(move || KafkaCluster::single(&root, &name))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut app = TestApp::builder()
        .broker(&broker.address())
        .env("CHRONICLE_PRODUCE_TIMEOUT_MS", "2000");
    for (name, value) in env {
        app = app.env(name, value);
    }
    (broker, app.spawn().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_takes_the_event_and_never_answers_is_outcome_unknown_and_the_retry_lands_once()
 {
    // Arrange: Chronicle on a private broker, waiting at most 2 s for an acknowledgement, and a
    // writer registered before the broker stops answering.
    let (broker, app) = on_a_private_broker("outcome", &[]).await;
    let writer = app.register_user("writer", "Writer").await;
    app.wait_for(std::slice::from_ref(&writer.position)).await;

    // Act: the broker is paused (SIGSTOP): its sockets take the produce requests, nothing
    // answers them. A registration and a post, without keys...
    broker.pause(0);
    let registration = app.register("ghost", "Ghost").await;
    let post = app.publish(&writer.token, "said into the void").await;
    // ...and someone else wanting the same handle meanwhile.
    let rival = app.register("ghost", "Rival").await;
    broker.resume(0);

    // Assert: both commands answered outcome_unknown with a key; the handle stayed reserved.
    let registration_key = unknown_outcome_key(&registration);
    let post_key = unknown_outcome_key(&post);
    assert_ne!(registration_key, post_key);
    rival.assert_problem(409, "handle_taken");

    // Retried with their keys once the broker answers again, they succeed...
    let retried_registration = app
        .send(
            app.command(Method::POST, "/v1/users")
                .header("idempotency-key", &registration_key)
                .json(&json!({ "handle": "ghost", "display_name": "Ghost", "password": PASSWORD })),
        )
        .await;
    retried_registration.assert_status(201);
    let retry_post = || {
        app.send(
            app.command(Method::POST, "/v1/posts")
                .bearer_auth(&writer.token)
                .header("idempotency-key", &post_key)
                .json(&json!({ "body": "said into the void" })),
        )
    };
    let retried_post = retry_post().await;
    retried_post.assert_status(202);
    // ...and a second retry gets the same answer.
    let again = retry_post().await;
    again.assert_status(202);
    assert_eq!(
        again.str_field("post_id"),
        retried_post.str_field("post_id")
    );

    // Each took effect exactly once in the read models.
    let ghost_id = retried_registration.str_field("user_id");
    let positions = vec![
        retried_registration.str_field("position"),
        retried_post.str_field("position"),
    ];
    app.wait_for(&positions).await;
    let ghost = app.get("/v1/users/by-handle/ghost", &positions).await;
    ghost.assert_status(200);
    assert_eq!(ghost.str_field("user_id"), ghost_id, "{ghost}");
    assert_eq!(ghost.str_field("display_name"), "Ghost", "{ghost}");
    let profile = app.get_user(&writer.id, &positions).await;
    assert_eq!(profile.u64_field("post_count"), 1, "{profile}");
    let feed = app
        .collect_pages(&format!("/v1/users/{}/posts", writer.id), &positions)
        .await;
    let ids: Vec<&str> = feed.iter().filter_map(|p| p["post_id"].as_str()).collect();
    assert_eq!(ids, [retried_post.str_field("post_id")], "{feed:?}");

    // Whatever copies of the two events the log holds (the paused broker's, the retries'),
    // each is one event id, and nothing became a dead letter.
    let (ok, events, stderr) = app.projector_cli(&["events"]).await;
    assert!(ok, "projector events failed: {stderr}");
    let envelopes: Vec<Value> = events
        .lines()
        .filter_map(|line| line.split('\t').nth(3))
        .map(|json| serde_json::from_str(json).expect("an envelope"))
        .collect();
    // (Their handles and bodies are sealed in the log: they are found by id.)
    let post_id = retried_post.str_field("post_id");
    for (kind, field, value) in [
        ("UserRegistered", "user_id", ghost_id.as_str()),
        ("PostPublished", "post_id", post_id.as_str()),
    ] {
        let copies: Vec<&Value> = envelopes
            .iter()
            .filter(|e| e["type"] == kind && e["data"][field] == value)
            .collect();
        assert!(!copies.is_empty(), "no {kind} in the log");
        assert!(
            copies
                .iter()
                .all(|e| e["event_id"] == copies[0]["event_id"]),
            "{kind} appended as different events: {copies:?}"
        );
    }
    let (ok, listed, stderr) = app.projector_cli(&["dead-letters", "list", "--all"]).await;
    assert!(ok, "dead-letters list failed: {stderr}");
    assert!(listed.contains("no dead letters"), "{listed}");
    app.assert_services_alive();
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_the_broker_refuses_is_still_outcome_unknown_and_a_later_one_lands_once() {
    // Arrange: Chronicle on a private broker, a writer, and a post whose event takes about
    // 1,500 bytes once its body is sealed.
    let (broker, app) = on_a_private_broker("refused-retry", &[]).await;
    let writer = app.register_user("writer", "Writer").await;
    app.wait_for(std::slice::from_ref(&writer.position)).await;
    let body = "a longer thought, ".repeat(50);
    let post = |key: Option<&str>| {
        let mut request = app
            .command(Method::POST, "/v1/posts")
            .bearer_auth(&writer.token)
            .json(&json!({ "body": body }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        app.send(request)
    };

    // Act: the post is sent while the broker takes requests and answers none...
    broker.pause(0);
    let first = post(None).await;
    broker.resume(0);
    let key = unknown_outcome_key(&first);
    // ...and retried on a command API whose producer refuses events over 1,400 bytes before
    // sending them (as it would with its queue full).
    app.kill_command_api();
    app.start_command_api_with(&[("CHRONICLE_KAFKA_MESSAGE_MAX_BYTES", "1400")])
        .await;
    let refused = post(Some(&key)).await;

    // Assert: the refusal is of the retry's copy only; the first copy may be in the log, so the
    // outcome is still unknown, with the same key (it was `broker_unavailable`, "nothing was
    // changed").
    assert_eq!(unknown_outcome_key(&refused), key, "{refused}");

    // A retry on a command API that can send it lands, once.
    app.kill_command_api();
    app.start_command_api().await;
    let landed = post(Some(&key)).await;
    landed.assert_status(202);
    let at = [landed.str_field("position")];
    let posts = app
        .collect_pages(&format!("/v1/users/{}/posts", writer.id), &at)
        .await;
    let ids: Vec<&str> = posts.iter().filter_map(|p| p["post_id"].as_str()).collect();
    assert_eq!(ids, [landed.str_field("post_id")], "{posts:?}");
    let profile = app.get_user(&writer.id, &at).await;
    assert_eq!(profile.u64_field("post_count"), 1, "{profile}");
    let (ok, events, stderr) = app.projector_cli(&["events"]).await;
    assert!(ok, "projector events failed: {stderr}");
    let post_id = landed.str_field("post_id");
    let copies = events
        .lines()
        .filter(|line| line.contains("PostPublished") && line.contains(post_id.as_str()))
        .count();
    println!(
        "copies of the post's event in the log: {copies} (more than one: the paused broker took \
         the first after all, which the refused retry could not have known)"
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_whose_outcome_is_unknown_completes_retried_or_not() {
    // Arrange: Chronicle on a private broker, waiting at most 2 s for an acknowledgement, with
    // erasures left pending finished in the background after 16 s (the least above a 15 s
    // request timeout).
    let (broker, app) = on_a_private_broker(
        "erasure",
        &[
            ("CHRONICLE_REQUEST_TIMEOUT_MS", "15000"),
            ("CHRONICLE_PENDING_RETRY_SECS", "16"),
        ],
    )
    .await;
    let leaver = app.register_user("leaver", "Leaver").await;
    let vanisher = app.register_user("vanisher", "Vanisher").await;
    app.wait_for(&[leaver.position.clone(), vanisher.position.clone()])
        .await;

    // Act: both ask to be erased while the broker takes requests and answers none.
    broker.pause(0);
    let erase = |token: &str, key: Option<&str>| {
        let mut request = app
            .command(Method::DELETE, "/v1/users/me")
            .bearer_auth(token)
            .json(&json!({ "password": PASSWORD }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        app.send(request)
    };
    let (left, vanished) = tokio::join!(erase(&leaver.token, None), erase(&vanisher.token, None));
    broker.resume(0);

    // Assert: both outcomes unknown, with a key. The leaver retries with it and is erased...
    let key = unknown_outcome_key(&left);
    unknown_outcome_key(&vanished);
    let retried = erase(&leaver.token, Some(&key)).await;
    retried.assert_status(202);
    let at = [retried.str_field("position")];
    app.get_user(&leaver.id, &at)
        .await
        .assert_problem(404, "user_not_found");
    // ...the vanisher never comes back, and the background finisher completes their erasure:
    // their token stops working once it has (watched through the command side, which is what
    // changes), and the read models follow.
    let started = Instant::now();
    loop {
        let resp = app
            .send(
                app.command(
                    Method::PUT,
                    &format!("/v1/users/me/following/{}", leaver.id),
                )
                .bearer_auth(&vanisher.token),
            )
            .await;
        if resp.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the pending erasure was not finished: {resp}"
        );
        // This sleep paces the polling of the finisher's effect; no read waits on it.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "the finisher completed the abandoned erasure {:.1} s after the broker came back",
        started.elapsed().as_secs_f64()
    );
    app.wait_for_offsets(&app.topic_ends().await, Duration::from_secs(60))
        .await;
    app.get_user(&vanisher.id, NO_POSITIONS)
        .await
        .assert_problem(404, "user_not_found");
    app.login("vanisher", PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_definite_refusal_is_broker_unavailable_and_frees_the_handle() {
    // Arrange: a producer that refuses messages over 1,400 bytes before sending them (a
    // registration with short sealed fields takes about 900).
    let app = TestApp::builder()
        .env("CHRONICLE_KAFKA_MESSAGE_MAX_BYTES", "1400")
        .spawn()
        .await;

    // Act: a registration whose event is too large (4-byte characters), then a small one of the
    // same handle.
    let refused = app
        .register_with(json!({
            "handle": "heavy",
            "display_name": "𝄞".repeat(50),
            "bio": "𝄞".repeat(160),
        }))
        .await;
    let second = app.register("heavy", "Light").await;

    // Assert: the refusal says nothing changed, and the handle was free again.
    refused.assert_problem(503, "broker_unavailable");
    second.assert_status(201);

    // Act: the same with an Idempotency-Key, and a retry with that key.
    let heavy = json!({
        "handle": "heavier",
        "display_name": "𝄞".repeat(50),
        "bio": "𝄞".repeat(160),
        "password": PASSWORD,
    });
    let keyed = || {
        app.send(
            app.command(Method::POST, "/v1/users")
                .header("idempotency-key", "heavier-once")
                .json(&heavy),
        )
    };
    let refused = keyed().await;
    let retried = keyed().await;
    let light = app.register("heavier", "Light").await;

    // Assert: the key was given up with the reservation, so its retry is a first attempt,
    // refused as such (not a retry of an event whose handle is no longer held), and the handle
    // is free.
    refused.assert_problem(503, "broker_unavailable");
    retried.assert_problem(503, "broker_unavailable");
    light.assert_status(201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_left_unknown_and_never_retried_is_finished_in_the_background() {
    // Arrange: Chronicle on a private broker, waiting at most 2 s for an acknowledgement, with
    // registrations left pending finished in the background after 16 s.
    let (mut broker, app) = on_a_private_broker(
        "registration",
        &[
            ("CHRONICLE_REQUEST_TIMEOUT_MS", "15000"),
            ("CHRONICLE_PENDING_RETRY_SECS", "16"),
        ],
    )
    .await;

    // Act: a registration sent while the broker takes requests and answers none; then the
    // broker dies with the request unread, and comes back. The client never retries.
    broker.pause(0);
    let lost = app.register("lost", "Lost").await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.kill(0);
        broker.restart(0);
        broker
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    unknown_outcome_key(&lost);

    // Assert: the handle stays reserved meanwhile, and its password already logs in...
    app.register("lost", "Rival")
        .await
        .assert_problem(409, "handle_taken");
    let login = app.login("lost", PASSWORD).await;
    login.assert_status(201);
    let user_id = login.str_field("user_id");
    // ...and the background finisher appends the registration: the user appears in the read
    // models (polled: no position of this event was ever handed out).
    let started = Instant::now();
    loop {
        let found = app.get("/v1/users/by-handle/lost", NO_POSITIONS).await;
        if found.status == 200 {
            assert_eq!(found.str_field("user_id"), user_id, "{found}");
            assert_eq!(found.str_field("display_name"), "Lost", "{found}");
            break;
        }
        found.assert_problem(404, "user_not_found");
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the pending registration was not finished"
        );
        // This sleep paces the polling of the finisher's effect; no read waits on it.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "the finisher registered the abandoned user {:.1} s after the broker came back",
        started.elapsed().as_secs_f64()
    );
    let (ok, events, stderr) = app.projector_cli(&["events"]).await;
    assert!(ok, "projector events failed: {stderr}");
    let copies = events
        .lines()
        .filter(|line| line.contains("UserRegistered") && line.contains(user_id.as_str()))
        .count();
    assert!(copies >= 1, "no UserRegistered of {user_id} in the log");
    println!("copies of the registration in the log: {copies}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_older_than_its_lifetime_is_a_new_key() {
    // Arrange: keys live 3.6 s (0.001 h).
    let app = TestApp::builder()
        .env("CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS", "0.001")
        .spawn()
        .await;
    let writer = app.register_user("writer", "Writer").await;
    let publish = || async {
        app.send(
            app.command(Method::POST, "/v1/posts")
                .bearer_auth(&writer.token)
                .header("idempotency-key", "once-a-day")
                .json(&json!({ "body": "hello" })),
        )
        .await
    };
    let started = Instant::now();
    let first = publish().await;
    first.assert_status(202);
    let first_post = first.str_field("post_id");

    // Act: retry with the key until it gives a new post.
    let mut retries = 0;
    let (new_post, expired_after) = loop {
        let resp = publish().await;
        resp.assert_status(202);
        let elapsed = started.elapsed();
        let post_id = resp.str_field("post_id");
        if post_id != first_post {
            break (post_id, elapsed);
        }
        retries += 1;
        assert!(
            elapsed < Duration::from_secs(60),
            "the key did not expire within 60 s"
        );
        // Paces the retries; nothing waits on it for a read.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Assert: before its lifetime the key answered the first post, after it a new one; the
    // background cleanup deleted the expired row (its log says how many).
    assert!(retries > 0, "the first retry already made a new post");
    assert!(
        expired_after >= Duration::from_millis(3600),
        "{expired_after:?}"
    );
    assert_ne!(new_post, first_post);
    let command_api_logs = || {
        std::fs::read_dir(app.log_dir())
            .expect("the test's log directory")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("command-api"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !command_api_logs().contains("deleted expired idempotency keys") {
        assert!(
            Instant::now() < deadline,
            "no cleanup logged in {}",
            app.log_dir().display()
        );
        // Polls the log; nothing waits on it for a read.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the key answered {retries} retries, then expired after {expired_after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_registrations_of_one_handle_both_apply_and_the_earliest_holds_the_handle() {
    // Arrange: history from before outcome_unknown, when a handle could be registered twice:
    // the later registration is written first (and lands first if they share a partition).
    let app = TestApp::spawn().await;
    let someone = app.register_user("someone", "Someone").await;
    let (early, late) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (user, at, name) in [
        (late, "2026-01-02T00:00:00.000Z", "Late"),
        (early, "2026-01-01T00:00:00.000Z", "Early"),
    ] {
        let envelope = json!({
            "event_id": uuid::Uuid::now_v7(),
            "type": "UserRegistered",
            "schema_version": 1,
            "occurred_at": at,
            "actor": user,
            "aggregate_id": user,
            "data": { "user_id": user, "handle": "twin", "display_name": name, "bio": "" },
        });
        app.produce_raw(&user.to_string(), None, envelope.to_string().as_bytes())
            .await;
    }

    // Act: each user changes their profile (after their registration, in its partition).
    let mut positions = vec![someone.position.clone()];
    for user in [early, late] {
        let token = app.session_token_for(&user.to_string()).await;
        let resp = app
            .update_profile(&token, json!({ "bio": format!("I am {user}") }))
            .await;
        resp.assert_status(202);
        positions.push(resp.str_field("position"));
    }
    app.wait_for(&positions).await;

    // Assert: both users exist with their changes, the handle names the earliest, and nothing
    // was set aside.
    for user in [early, late] {
        let profile = app.get_user(&user.to_string(), &positions).await;
        profile.assert_status(200);
        assert_eq!(
            profile.str_field("bio"),
            format!("I am {user}"),
            "{profile}"
        );
    }
    let twin = app.get("/v1/users/by-handle/twin", &positions).await;
    twin.assert_status(200);
    assert_eq!(twin.str_field("user_id"), early.to_string(), "{twin}");
    let (ok, listed, stderr) = app.projector_cli(&["dead-letters", "list", "--all"]).await;
    assert!(ok, "dead-letters list failed: {stderr}");
    assert!(listed.contains("no dead letters"), "{listed}");
}
