//! Accounts through HTTP: logging in and out, changing a password, the limit on failed logins,
//! and the users registered before passwords existed (the upgrade fixture's).
//!
//! "A token stops working" is checked on both services: a command (`POST
//! /v1/me/notifications/read`, which names nothing that must exist) and a private read (the
//! unread count), each answered 401 the moment the session ended, with no wait.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{PASSWORD, Resp, TestApp};

/// The fixture's topic had 12 partitions (`CHRONICLE_PARTITIONS` of `script/server`).
const FIXTURE_PARTITIONS: u32 = 12;

/// A command with `token`: marks nothing read (an id older than any notification).
async fn command_as(app: &TestApp, token: &str) -> Resp {
    app.send(
        app.command(Method::POST, "/v1/me/notifications/read")
            .bearer_auth(token)
            .json(&json!({ "up_to": uuid::Uuid::nil() })),
    )
    .await
}

/// A private read with `token`.
async fn read_as(app: &TestApp, token: &str) -> Resp {
    app.send(
        app.query("/v1/me/notifications/unread-count")
            .bearer_auth(token),
    )
    .await
}

/// Asserts `token` works on both services.
async fn assert_works(app: &TestApp, token: &str, what: &str) {
    let command = command_as(app, token).await;
    assert_eq!(command.status, 202, "{what}: the command: {command}");
    let read = read_as(app, token).await;
    assert_eq!(read.status, 200, "{what}: the read: {read}");
}

/// Asserts `token` is refused by both services.
async fn assert_refused(app: &TestApp, token: &str) {
    command_as(app, token)
        .await
        .assert_problem(401, "unauthorized");
    read_as(app, token)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn a_login_opens_a_session_and_a_logout_ends_only_that_one() {
    // Arrange
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;

    // Act: log in, with the handle as typed (padded, upper-cased).
    let login = app.login("  ALICE ", PASSWORD).await;

    // Assert: a new token for alice, valid for the configured 7 days.
    login.assert_status(201);
    assert_eq!(login.str_field("user_id"), alice.id);
    let token = login.str_field("token");
    assert_ne!(token, alice.token);
    let expires_at = chrono::DateTime::parse_from_rfc3339(&login.str_field("expires_at"))
        .expect("expires_at is RFC 3339");
    let lifetime = expires_at.signed_duration_since(chrono::Utc::now());
    assert!(
        (lifetime.num_seconds() - 7 * 24 * 3600).abs() < 60,
        "the token lives {lifetime}"
    );
    assert_works(&app, &token, "the login's token").await;
    assert_works(&app, &alice.token, "the registration's token").await;

    // Act: log out of the login's session.
    app.logout(&token).await.assert_status(204);

    // Assert: that token is refused at once by both services, and cannot log out again; the
    // registration's session is still live.
    assert_refused(&app, &token).await;
    app.logout(&token).await.assert_problem(401, "unauthorized");
    assert_works(&app, &alice.token, "the other session's token").await;
}

#[tokio::test]
async fn a_password_change_ends_every_session_and_only_the_new_password_logs_in() {
    // Arrange: two sessions.
    let app = TestApp::spawn().await;
    let bob = app.register_user("bob", "Bob").await;
    let second = app.login("bob", PASSWORD).await.str_field("token");
    let new_password = "a much better one";

    // Act and assert: a wrong, missing or unneeded current password is 403; a bad new one 422.
    app.change_password(
        &bob.token,
        json!({ "current_password": "not the password", "new_password": new_password }),
    )
    .await
    .assert_problem(403, "invalid_credentials");
    app.change_password(&bob.token, json!({ "new_password": new_password }))
        .await
        .assert_problem(403, "invalid_credentials");
    app.change_password(
        &bob.token,
        json!({ "current_password": PASSWORD, "new_password": "short" }),
    )
    .await
    .assert_problem(422, "validation_failed");
    app.change_password(&bob.token, json!({ "current_password": PASSWORD }))
        .await
        .assert_problem(400, "invalid_body");
    assert_works(&app, &bob.token, "a token after refused changes").await;

    // Act: the change.
    app.change_password(
        &bob.token,
        json!({ "current_password": PASSWORD, "new_password": new_password }),
    )
    .await
    .assert_status(204);

    // Assert: both sessions ended, the old password is refused, the new one logs in.
    assert_refused(&app, &bob.token).await;
    assert_refused(&app, &second).await;
    app.login("bob", PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    let login = app.login("bob", new_password).await;
    login.assert_status(201);
    assert_works(&app, &login.str_field("token"), "the new password's token").await;
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn an_unknown_handle_and_a_wrong_password_look_alike_and_failures_are_limited_per_handle() {
    // Arrange: users to fail against, four failures each (the limit allows five).
    let app = TestApp::spawn().await;
    let mut targets = Vec::new();
    for i in 0..3 {
        targets.push(app.register_user(&format!("target_{i}"), "Target").await);
    }

    // Act: wrong passwords of real handles and any password of unknown ones, interleaved.
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    let mut answers = Vec::new();
    for round in 0..12 {
        let target = &targets[round % targets.len()];
        let started = Instant::now();
        let resp = app.login(&target.handle, "not the password").await;
        wrong.push(started.elapsed());
        answers.push(resp);
        let started = Instant::now();
        let resp = app
            .login(&format!("nobody_{round}"), "not the password")
            .await;
        unknown.push(started.elapsed());
        answers.push(resp);
    }

    // Assert: the same answer, in about the same time.
    let first = &answers[0];
    for resp in &answers {
        resp.assert_problem(401, "invalid_credentials");
        assert_eq!(resp.body, first.body, "every failed login answers alike");
    }
    let (wrong, unknown) = (median(wrong), median(unknown));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    println!(
        "failed logins, median of 12: wrong password {wrong:?}, unknown handle {unknown:?} \
         (ratio {ratio:.2})"
    );
    assert!(
        (0.67..=1.5).contains(&ratio),
        "an unknown handle took {unknown:?}, a wrong password {wrong:?}"
    );

    // Act: a fifth failure of target_0 is still answered; the sixth attempt is refused before
    // its password is checked, even with the right password.
    app.login("target_0", "not the password")
        .await
        .assert_problem(401, "invalid_credentials");
    let limited = app.login("target_0", PASSWORD).await;

    // Assert
    limited.assert_problem(429, "rate_limited");
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=180).contains(&wait), "Retry-After: {wait}");
    // The limit is per handle: another user logs in; and an unknown handle is limited alike,
    // so a 429 says nothing about whether a handle exists.
    app.login("target_1", PASSWORD).await.assert_status(201);
    for _ in 0..5 {
        app.login("nobody_at_all", "guess")
            .await
            .assert_problem(401, "invalid_credentials");
    }
    app.login("nobody_at_all", "guess")
        .await
        .assert_problem(429, "rate_limited");
    // A handle no handle could be (found by schema fuzzing: U+0000 made the lookup a 500).
    for odd in ["\u{0}\u{de}+%", "a b", &"x".repeat(200)] {
        app.login(odd, "guess")
            .await
            .assert_problem(401, "invalid_credentials");
    }
}

#[tokio::test]
async fn a_user_registered_before_passwords_keeps_their_token_until_they_set_one() {
    // Arrange: the database and log of the release before passwords; its users have tokens
    // without a session id, and no password.
    let app = TestApp::builder()
        .partitions(FIXTURE_PARTITIONS)
        .history("v1-history")
        .spawn()
        .await;
    // Notifications, the private reads, need the rebuild that upgrade.rs tests.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "projector rebuild failed:\n{out}\n{err}");
    let alice = app
        .get("/v1/users/by-handle/alice", crate::harness::NO_POSITIONS)
        .await
        .str_field("user_id");
    let carol = app
        .get("/v1/users/by-handle/carol", crate::harness::NO_POSITIONS)
        .await
        .str_field("user_id");
    let old_token = app.token_for(&alice);

    // Assert: the old token works; no password logs alice in yet.
    assert_works(&app, &old_token, "a token from before passwords").await;
    app.login("alice", "")
        .await
        .assert_problem(401, "invalid_credentials");
    app.change_password(
        &old_token,
        json!({ "current_password": "anything", "new_password": "alice's first password" }),
    )
    .await
    .assert_problem(403, "invalid_credentials");

    // Act: alice sets a password with her old token, no current password.
    app.change_password(
        &old_token,
        json!({ "new_password": "alice's first password" }),
    )
    .await
    .assert_status(204);

    // Assert: the old token stopped working; the password logs in.
    assert_refused(&app, &old_token).await;
    let login = app.login("alice", "alice's first password").await;
    login.assert_status(201);
    assert_works(&app, &login.str_field("token"), "alice's login").await;

    // A logout with an old token ends it too.
    let carols = app.token_for(&carol);
    assert_works(&app, &carols, "carol's old token").await;
    app.logout(&carols).await.assert_status(204);
    assert_refused(&app, &carols).await;
}

#[tokio::test]
async fn a_private_live_stream_ends_when_its_session_ends() {
    // Arrange: alice's notifications stream, on a token of its own, with heartbeats every 300 ms
    // (a stream checks its token at each heartbeat); a public stream next to it.
    let app = TestApp::builder()
        .env("CHRONICLE_STREAM_HEARTBEAT_MS", "300")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let token = app.login("alice", PASSWORD).await.str_field("token");
    let mut private = app
        .open_stream("/v1/me/notifications/stream", None, Some(&token))
        .await;
    let mut public = app.open_stream("/v1/feed/stream", None, None).await;
    assert!(
        !private.ends_within(Duration::from_secs(1)).await,
        "the stream stays open while its session is live"
    );

    // Act
    app.logout(&token).await.assert_status(204);

    // Assert: the private stream ends; the public one and alice's other session go on.
    assert!(
        private.ends_within(Duration::from_secs(60)).await,
        "the stream of an ended session must end"
    );
    assert!(!public.ends_within(Duration::from_secs(1)).await);
    assert_works(&app, &alice.token, "the registration's token").await;
}
