//! Freshness: how long until a command's post is readable through the query API, waiting with
//! `min_position` for the position the command answered with; from when the command was due,
//! and from its 202.

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
            let sent = http
                .post(format!("{command}/v1/posts"))
                .bearer_auth(&user.token)
                .json(&json!({ "body": "how fresh is this" }))
                .send()
                .await
                .map_err(|err| format!("command: {err}"))?;
            let status = sent.status();
            let answer: Value = sent.json().await.map_err(|err| format!("command: {err}"))?;
            let acknowledged = Instant::now();
            let (Some(post), Some(position)) =
                (answer["post_id"].as_str(), answer["position"].as_str())
            else {
                return Err(format!("command: {status} {answer}"));
            };
            if let Some(acked) = &acked {
                acked(post, acknowledged);
            }
            let read = http
                .get(format!("{query}/v1/posts/{post}"))
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
    })
    .await;
    let total = samples.len() + failures.values().sum::<usize>();
    if samples.len() < total * 99 / 100 {
        return Err(format!(
            "only {} of {total} posts read back: {failures:?}",
            samples.len()
        )
        .into());
    }
    Ok(Freshness::of(samples))
}
