//! Freshness: how long until a command's post is readable through the query API, waiting with
//! `min_position` for the position the command answered with; from when the command was due,
//! and from its 202.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_tests::bench::{Freshness, Result, open_loop};
use serde_json::{Value, json};

use crate::services::{Stack, User};

/// What is told of each post's 202: its id and when the 202 came.
pub(crate) type Acked = Arc<dyn Fn(&str, Instant) + Send + Sync>;

/// Publishes `rate` posts per second for `duration`, each by the next user; each post is read
/// back with its position, and the time from when the command was due (and from its 202) to
/// the read's answer is the freshness. `acked`, if any, hears of each 202.
pub(crate) async fn measure(
    stack: &Stack,
    users: &[User],
    rate: u64,
    duration: Duration,
    acked: Option<Acked>,
) -> Result<Freshness> {
    let (samples, failures) = open_loop(rate as f64, duration, |n, due| {
        let user = users[n as usize % users.len()].clone();
        let (http, command, query, acked) = (
            stack.http.clone(),
            stack.command.clone(),
            stack.query.clone(),
            acked.clone(),
        );
        async move {
            let at = Services {
                http: &http,
                command: &command,
                query: &query,
            };
            publish_and_read(at, &user.token, due, acked.as_ref()).await
        }
    })
    .await;
    read_back(samples, &failures)
}

/// The freshness of the posts read back (`samples`), unless more than 1% of the tries failed
/// (`failures`, by what went wrong).
pub(crate) fn read_back(
    samples: Vec<(f64, f64)>,
    failures: &BTreeMap<String, usize>,
) -> Result<Freshness> {
    let total = samples.len() + failures.values().sum::<usize>();
    if samples.len() < total * 99 / 100 {
        return Err(format!(
            "only {} of {total} tries read back a post: {failures:?}",
            samples.len()
        )
        .into());
    }
    Ok(Freshness::of(samples))
}

/// The services a task sends to.
#[derive(Clone, Copy)]
pub(crate) struct Services<'a> {
    pub(crate) http: &'a reqwest::Client,
    /// The command API's base URL.
    pub(crate) command: &'a str,
    /// The query API's base URL.
    pub(crate) query: &'a str,
}

/// Publishes a post as the holder of `token`, tells `acked` of its 202, and reads it back with
/// its position: the milliseconds from `due` and from the 202 to the read's answer.
pub(crate) async fn publish_and_read(
    stack: Services<'_>,
    token: &str,
    due: tokio::time::Instant,
    acked: Option<&Acked>,
) -> std::result::Result<(f64, f64), String> {
    let sent = stack
        .http
        .post(format!("{}/v1/posts", stack.command))
        .bearer_auth(token)
        .json(&json!({ "body": "how fresh is this" }))
        .send()
        .await
        .map_err(|err| format!("command: {err}"))?;
    let status = sent.status();
    let answer: Value = sent.json().await.map_err(|err| format!("command: {err}"))?;
    let acknowledged = Instant::now();
    let (Some(post), Some(position)) = (answer["post_id"].as_str(), answer["position"].as_str())
    else {
        return Err(format!("command: {status} {answer}"));
    };
    if let Some(acked) = acked {
        acked(post, acknowledged);
    }
    let read = stack
        .http
        .get(format!("{}/v1/posts/{post}", stack.query))
        .query(&[("min_position", position)])
        .send()
        .await
        .map_err(|err| format!("read: {err}"))?;
    let status = read.status();
    let body = read.bytes().await.map_err(|err| format!("read: {err}"))?;
    if !status.is_success() {
        return Err(format!("read: {status} {}", String::from_utf8_lossy(&body)));
    }
    let millis = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    Ok((millis(due.into_std()), millis(acknowledged)))
}
