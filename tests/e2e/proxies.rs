//! Behind a proxy: with `CHRONICLE_TRUSTED_PROXIES` the client address comes from the proxy's
//! `X-Forwarded-For` or `Forwarded` header, for the per-address rate limit and the scope of a
//! registration's `Idempotency-Key`; without it those headers are ignored.
//!
//! The tests' requests all come from 127.0.0.1, which plays the proxy; the forwarded addresses
//! are documentation addresses that only appear in headers.

use reqwest::RequestBuilder;
use serde_json::json;

use crate::harness::{Resp, TestApp};

/// 1 request per second per address, bursts of 3, with `extra` settings.
async fn limited_app(extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder()
        .env("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "1")
        .env("CHRONICLE_RATE_LIMIT_BURST_SECS", "3");
    for (name, value) in extra {
        builder = builder.env(name, value);
    }
    builder.spawn().await
}

/// `GET /v1/users/{nobody}` on the query API (a 404 when admitted), with `header` set.
async fn read_as(app: &TestApp, header: (&str, &str)) -> Resp {
    let nobody = uuid::Uuid::now_v7();
    app.send(
        app.query(&format!("/v1/users/{nobody}"))
            .header(header.0, header.1),
    )
    .await
}

/// Reads as `header` until one is limited (at most 10): the statuses.
async fn exhaust(app: &TestApp, header: (&str, &str)) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let resp = read_as(app, header).await;
        statuses.push(resp.status.as_u16());
        if resp.status == 429 {
            assert_eq!(resp.code(), Some("rate_limited"), "{resp}");
            assert!(resp.header("retry-after").is_some(), "{resp:?}");
            break;
        }
    }
    statuses
}

const CLIENT_A: (&str, &str) = ("x-forwarded-for", "198.51.100.7, 203.0.113.10");
const CLIENT_B: (&str, &str) = ("forwarded", r#"for="[2001:db8:cafe::17]:4711""#);

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_clients_of_a_trusted_proxy_get_budgets_of_their_own() {
    // Arrange: 127.0.0.1 is a trusted proxy, and so is 198.51.100.0/24.
    let app = limited_app(&[("CHRONICLE_TRUSTED_PROXIES", "198.51.100.0/24, 127.0.0.1")]).await;

    // Act: client A (203.0.113.10, behind two trusted proxies) spends its budget.
    let statuses = exhaust(&app, CLIENT_A).await;

    // Assert: A had its burst of 3 then was limited, while B still gets its own burst.
    assert_eq!(&statuses[..3], [404, 404, 404], "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&429),
        "client A never limited: {statuses:?}"
    );
    for n in 0..3 {
        let resp = read_as(&app, CLIENT_B).await;
        assert_eq!(resp.status, 404, "client B's request {n}: {resp}");
    }
    // A spoofed address left of A's does not make a new client.
    let spoofed = ("x-forwarded-for", "192.0.2.1, 203.0.113.10");
    let resp = read_as(&app, spoofed).await;
    assert_eq!(
        resp.status, 429,
        "a prepended address escaped the limit: {resp}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trusted_proxies_forwarding_headers_are_ignored() {
    // Arrange: the same limits, nobody trusted.
    let app = limited_app(&[]).await;

    // Act: client A spends the budget, then client B asks twice at once.
    let statuses = exhaust(&app, CLIENT_A).await;
    let b = [read_as(&app, CLIENT_B).await, read_as(&app, CLIENT_B).await];

    // Assert: every request counted against the peer's one budget. The budget refills one
    // request per second, so B's two back-to-back requests cannot both pass (with a budget of
    // their own, both would).
    assert_eq!(&statuses[..3], [404, 404, 404], "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&429),
        "client A never limited: {statuses:?}"
    );
    assert!(
        b.iter().any(|resp| resp.status == 429),
        "client B got a budget of its own: {} / {}",
        b[0],
        b[1]
    );
}

/// `POST /v1/users` with `Idempotency-Key: key`, forwarded for `client`.
fn register_as(app: &TestApp, client: &str, key: &str, handle: &str) -> RequestBuilder {
    app.command(reqwest::Method::POST, "/v1/users")
        .header("x-forwarded-for", client)
        .header("idempotency-key", key)
        .json(&json!({ "handle": handle, "display_name": handle, "password": crate::harness::PASSWORD }))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_key_is_scoped_to_the_forwarded_client() {
    // Arrange: 127.0.0.1 is a trusted proxy; no rate limit.
    let app = TestApp::builder()
        .env("CHRONICLE_TRUSTED_PROXIES", "127.0.0.1")
        .spawn()
        .await;

    // Act: two clients behind the proxy register with one Idempotency-Key, then the first
    // retries.
    let first = app
        .send(register_as(&app, "203.0.113.10", "signup-1", "carol"))
        .await;
    let other = app
        .send(register_as(&app, "203.0.113.11", "signup-1", "dave"))
        .await;
    let retry = app
        .send(register_as(&app, "203.0.113.10", "signup-1", "carol"))
        .await;

    // Assert: two registrations (the key is another client's), and the retry is the first
    // answer (the token is issued anew, so it is not compared).
    first.assert_status(201);
    other.assert_status(201);
    assert_ne!(first.str_field("user_id"), other.str_field("user_id"));
    assert_eq!(other.str_field("handle"), "dave");
    retry.assert_status(201);
    assert_eq!(retry.str_field("user_id"), first.str_field("user_id"));
    assert_eq!(retry.str_field("position"), first.str_field("position"));
}
