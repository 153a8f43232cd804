//! The command load: one mix of commands, sent over HTTP the same way to the command API and to
//! the bare HTTP baseline, either as fast as answers come or on a clock.

use std::sync::Arc;
use std::time::Duration;

use chronicle_tests::bench::{ClosedLoop, Latencies, closed_loop, open_loop};
use chronicle_tests::workload::{Rng, Zipf};
use serde_json::{Value, json};

use crate::services::User;

/// One command of the mix.
pub(crate) struct Request {
    method: reqwest::Method,
    path: String,
    token: String,
    body: Option<Value>,
}

/// The mix: 50% likes and 10% unlikes of Zipf-popular users' posts (a few posts get most of
/// them), 25% posts, 15% follows, each by a random user.
#[derive(Clone)]
pub(crate) struct Mix {
    users: Arc<[User]>,
    popularity: Arc<Zipf>,
}

/// What the mix is, for the report.
pub(crate) const MIX: &str =
    "50% likes and 10% unlikes of Zipf-popular posts, 25% posts, 15% follows";

impl Mix {
    pub(crate) fn new(users: Arc<[User]>) -> Mix {
        let popularity = Arc::new(Zipf::new(users.len()));
        Mix { users, popularity }
    }

    /// The command `rng` picks.
    pub(crate) fn pick(&self, rng: &mut Rng) -> Request {
        let users = &self.users;
        let me = rng.below(users.len());
        let user = &users[me];
        // Anyone but the user (following oneself is refused).
        let other = &users[(me + 1 + rng.below(users.len() - 1)) % users.len()];
        let liked = &users[self.popularity.sample(rng, users.len())];
        let (method, path, body) = match rng.below(100) {
            0..50 => (
                reqwest::Method::PUT,
                format!("/v1/posts/{}/like", liked.post),
                None,
            ),
            50..60 => (
                reqwest::Method::DELETE,
                format!("/v1/posts/{}/like", liked.post),
                None,
            ),
            60..85 => (
                reqwest::Method::POST,
                "/v1/posts".to_owned(),
                Some(json!({ "body": "a post written under load" })),
            ),
            _ => (
                reqwest::Method::PUT,
                format!("/v1/users/me/following/{}", other.id),
                None,
            ),
        };
        Request {
            method,
            path,
            token: user.token.clone(),
            body,
        }
    }
}

impl Request {
    /// Whether it publishes a post.
    pub(crate) fn is_post(&self) -> bool {
        self.method == reqwest::Method::POST && self.path == "/v1/posts"
    }

    /// The token it is sent with.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

/// Sends `request` to `base`; whether it was answered 2xx (the answer read whole, as a client
/// would, which also frees the connection for the next one).
pub(crate) async fn send(http: &reqwest::Client, base: &str, request: Request) -> bool {
    let mut builder = http
        .request(request.method, format!("{base}{}", request.path))
        .bearer_auth(&request.token);
    if let Some(body) = request.body {
        builder = builder.json(&body);
    }
    match builder.send().await {
        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// `clients` closed-loop clients sending the mix to `base` for `duration`.
pub(crate) async fn saturate(
    http: &reqwest::Client,
    base: &str,
    mix: &Mix,
    clients: usize,
    duration: Duration,
) -> ClosedLoop {
    closed_loop(clients, duration, |client, n| {
        let mut rng = seeded(((client as u64) << 32) ^ n);
        send(http, base, mix.pick(&mut rng))
    })
    .await
}

/// The mix sent to `base` at `rate` per second for `duration`; each latency from when its
/// command was due. The latencies of the 2xx answers, and how many were not 2xx.
pub(crate) async fn at_rate(
    http: &reqwest::Client,
    base: &str,
    mix: &Mix,
    rate: f64,
    duration: Duration,
) -> (Latencies, usize) {
    let (samples, failures) = open_loop(rate, duration, |n, due| {
        let mut rng = seeded(n);
        let request = mix.pick(&mut rng);
        let (http, base) = (http.clone(), base.to_owned());
        async move {
            if send(&http, &base, request).await {
                Ok(due.elapsed().as_secs_f64() * 1000.0)
            } else {
                Err("not 2xx".to_owned())
            }
        }
    })
    .await;
    (Latencies::sorted(samples), failures.values().sum())
}

/// A generator for the `n`th command: the odd multiplier spreads neighbouring `n` over all bits
/// (xorshift's first outputs of neighbouring seeds are alike); 0, which xorshift never leaves,
/// only for `n = u64::MAX`.
pub(crate) fn seeded(n: u64) -> Rng {
    Rng(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}
