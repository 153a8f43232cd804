//! Limits: request rates per user and per client address (429 `rate_limited` with
//! `Retry-After`), and request bodies that do not arrive in time (408).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_user_beyond_the_command_rate_gets_429_and_other_users_do_not() {
    // Arrange: 1 command per second per user, bursts of 3.
    let app = TestApp::builder()
        .env("CHRONICLE_RATE_LIMIT_PER_USER", "1")
        .env("CHRONICLE_RATE_LIMIT_BURST_SECS", "3")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;

    // Act: alice sends ten commands as fast as she can.
    let started = Instant::now();
    let mut answers = Vec::new();
    for n in 0..10 {
        let resp = app
            .update_profile(&alice.token, json!({ "bio": format!("take {n}") }))
            .await;
        answers.push(resp);
    }
    let elapsed = started.elapsed();

    // Assert: the burst and what the rate refilled meanwhile went through; the rest are 429.
    let admitted = answers.iter().filter(|r| r.status == 202).count();
    let refilled = usize::try_from(elapsed.as_secs()).unwrap_or(usize::MAX) + 1;
    assert!(
        (3..=3 + refilled).contains(&admitted),
        "{admitted} admitted in {elapsed:?}"
    );
    let limited = answers
        .iter()
        .find(|r| r.status == 429)
        .expect("some commands are limited");
    assert_eq!(limited.code(), Some("rate_limited"), "{limited}");
    let retry_after: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {limited:?}"));
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(
        answers.iter().all(|r| r.status == 202 || r.status == 429),
        "only 202 and 429 expected"
    );

    // Bob has his own allowance, and alice gets hers back after Retry-After.
    app.update_profile(&bob.token, json!({ "bio": "unaffected" }))
        .await
        .assert_status(202);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    app.update_profile(&alice.token, json!({ "bio": "later" }))
        .await
        .assert_status(202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_address_beyond_the_request_rate_gets_429_and_health_stays_reachable() {
    // Arrange: 2 requests per second per address, bursts of 2.
    let app = TestApp::builder()
        .env("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "2")
        .env("CHRONICLE_RATE_LIMIT_BURST_SECS", "1")
        .spawn()
        .await;
    let nobody = uuid::Uuid::now_v7().to_string();

    // Act: reads as fast as they go.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let resp = app.get_user(&nobody, &[]).await;
        statuses.push(resp.status.as_u16());
        if resp.status == 429 {
            limited.get_or_insert(resp);
        }
    }

    // Assert: the first two were answered, later ones limited, as a problem with Retry-After.
    assert_eq!(&statuses[..2], [404, 404], "{statuses:?}");
    let limited = limited.unwrap_or_else(|| panic!("nothing limited: {statuses:?}"));
    assert_eq!(limited.code(), Some("rate_limited"));
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    let health = app
        .client
        .get(format!("{}/healthz", app.query_url))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    // Arrange: requests may take 1.5 s.
    let app = TestApp::builder()
        .env("CHRONICLE_REQUEST_TIMEOUT_MS", "1500")
        .env("CHRONICLE_PRODUCE_TIMEOUT_MS", "900")
        .consistency_wait_ms(500)
        .spawn()
        .await;
    let address = app.command_url.trim_start_matches("http://").to_owned();

    // Act: a registration that announces 100 bytes of body and sends one.
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect to the command API");
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nConnection: close\r\n\r\n{{"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the request head");
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");

    // Assert: 408 as a problem, after about the timeout.
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"invalid_body\""), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}
