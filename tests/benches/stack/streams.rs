//! Live streams under load: subscribers of the feed, of home timelines and of notifications
//! stay connected while the command mix flows at a set rate (the goal's 1,000 commands/s): its
//! posts reach the feed and timelines, its likes, follows and replies the notifications. Each
//! post's delivery delay (its 202 to each stream's `post` message) is measured next to its
//! freshness (its 202 to the read with its `min_position`), on the same posts, in the same
//! seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_tests::bench::{Freshness, Latencies, Result, open_loop, rss_mib};
use chronicle_tests::workload::Rng;
use tokio::sync::mpsc;

use crate::commands::{self, Mix};
use crate::freshness::{self, Services, publish_and_read};
use crate::services::{Stack, User};

/// What the measure saw.
pub(crate) struct Streamed {
    /// 202 -> message received, per (post, stream that carries it).
    pub(crate) delivery: Latencies,
    /// 202 -> readable with its position, per post (the same posts).
    pub(crate) freshness: Freshness,
    /// Streams open through the measure, by kind: feed, timelines, notifications.
    pub(crate) streams: [usize; 3],
    /// Messages of posts received in all.
    pub(crate) messages: usize,
    /// Notification messages received in all.
    pub(crate) notifications: usize,
    /// Streams that ended before the measure did (cut off, or failed).
    pub(crate) ended: usize,
    /// The query API's resident memory with every stream open, MiB (VmRSS).
    pub(crate) query_rss: Option<f64>,
    /// The query API's own account of its rounds (`stream_*` lines of its /metrics).
    pub(crate) rounds: String,
}

/// Of `subscribers` streams, this share reads the global feed (every post): few, since each
/// gets every message; the rest are timelines (six in ten) and notifications.
const FEED_SHARE: f64 = 0.01;

/// Opens `subscribers` streams, then sends `mix` at `rate` commands per second for `duration`
/// and measures its posts (see the module's documentation).
pub(crate) async fn measure(
    stack: &Stack,
    query_pid: u32,
    users: &[User],
    mix: &Mix,
    subscribers: usize,
    rate: u64,
    duration: Duration,
) -> Result<Streamed> {
    // One connection per stream, with no time limit, apart from the commands' client.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let (received_tx, mut received) = mpsc::unbounded_channel::<(String, Instant)>();
    let notified = Arc::new(AtomicUsize::new(0));
    let (opened_tx, mut opened) = mpsc::channel::<bool>(subscribers.max(1));
    let feeds = ((subscribers as f64 * FEED_SHARE).ceil() as usize).min(subscribers);
    let timelines = (subscribers - feeds) * 6 / 10;
    let notifications = subscribers - feeds - timelines;
    let mut rng = Rng(0x5eed_57ea_u64);
    let mut tasks = Vec::with_capacity(subscribers);
    for n in 0..subscribers {
        let user = &users[rng.below(users.len())];
        let request = if n < feeds {
            http.get(format!("{}/v1/feed/stream", stack.query))
        } else if n < feeds + timelines {
            http.get(format!(
                "{}/v1/users/{}/timeline/stream",
                stack.query, user.id
            ))
        } else {
            http.get(format!("{}/v1/me/notifications/stream", stack.query))
                .bearer_auth(&user.token)
        };
        let (received_tx, opened_tx) = (received_tx.clone(), opened_tx.clone());
        let notified = Arc::clone(&notified);
        tasks.push(tokio::spawn(subscribe(
            request,
            received_tx,
            notified,
            opened_tx,
        )));
    }
    drop((received_tx, opened_tx));
    let mut open = 0;
    for _ in 0..subscribers {
        if opened.recv().await == Some(true) {
            open += 1;
        }
    }
    if open < subscribers {
        return Err(format!("only {open} of {subscribers} streams opened").into());
    }

    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let acked: freshness::Acked = {
        let acks = Arc::clone(&acks);
        Arc::new(move |post: &str, at: Instant| {
            acks.lock().expect("acks").insert(post.to_owned(), at);
        })
    };
    let fresh = mixed_load(stack, mix, rate, duration, acked).await?;
    let query_rss = rss_mib(query_pid);
    let rounds = stack
        .http
        .get(format!("{}/metrics", stack.query))
        .send()
        .await?
        .text()
        .await?
        .lines()
        .filter(|line| line.starts_with("stream_"))
        .collect::<Vec<_>>()
        .join("; ");
    // The last posts' messages: what arrives within a second of the last read.
    let mut messages = Vec::new();
    let quiet = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(quiet.into(), received.recv()).await {
        messages.push(message);
    }
    let ended = tasks.iter().filter(|task| task.is_finished()).count();
    for task in &tasks {
        task.abort();
    }
    while let Ok(message) = received.try_recv() {
        messages.push(message);
    }
    let acks = acks.lock().expect("acks");
    // A message can beat the 202 to the client: that delay counts as 0. Posts of the
    // population, published before the measure, have no 202 here.
    let delays: Vec<f64> = messages
        .iter()
        .filter_map(|(post, at)| {
            let acked = acks.get(post)?;
            Some(at.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
        })
        .collect();
    Ok(Streamed {
        messages: delays.len(),
        notifications: notified.load(Ordering::Relaxed),
        delivery: Latencies::sorted(delays),
        freshness: fresh,
        streams: [feeds, timelines, notifications],
        ended,
        query_rss,
        rounds,
    })
}

/// Sends `mix` at `rate` per second for `duration`: each post is published and read back as
/// the freshness measure does (its 202 told to `acked`); every other command is sent and
/// answered. The posts' freshness, unless more than 1% of the commands failed.
async fn mixed_load(
    stack: &Stack,
    mix: &Mix,
    rate: u64,
    duration: Duration,
    acked: freshness::Acked,
) -> Result<Freshness> {
    let (samples, failures) = open_loop(rate as f64, duration, |n, due| {
        let request = mix.pick(&mut commands::seeded(n));
        let (http, command, query, acked) = (
            stack.http.clone(),
            stack.command.clone(),
            stack.query.clone(),
            Arc::clone(&acked),
        );
        async move {
            if request.is_post() {
                let at = Services {
                    http: &http,
                    command: &command,
                    query: &query,
                };
                let token = request.token().to_owned();
                return publish_and_read(at, &token, due, Some(&acked))
                    .await
                    .map(Some);
            }
            if commands::send(&http, &command, request).await {
                Ok(None)
            } else {
                Err("command: not 2xx".to_owned())
            }
        }
    })
    .await;
    freshness::read_back(samples.into_iter().flatten().collect(), &failures)
}

/// Reads one stream until it ends: says whether it opened, then tells of every `post` message
/// (its post id, when it arrived) and counts the `notification` ones.
async fn subscribe(
    request: reqwest::RequestBuilder,
    received: mpsc::UnboundedSender<(String, Instant)>,
    notified: Arc<AtomicUsize>,
    opened: mpsc::Sender<bool>,
) {
    let mut response = match request.send().await {
        Ok(response) if response.status().is_success() => response,
        _ => {
            let _ = opened.send(false).await;
            return;
        }
    };
    let _ = opened.send(true).await;
    drop(opened);
    let mut buffer: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.extend_from_slice(&chunk);
        // Whole blocks only; a `post` message's data starts with its post id.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            if block.contains("\nevent: notification\n") {
                notified.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !block.contains("\nevent: post\n") {
                continue;
            }
            if let Some(post) = block
                .split("data: {\"post_id\":\"")
                .nth(1)
                .and_then(|rest| rest.get(..36))
            {
                let _ = received.send((post.to_owned(), at));
            }
        }
    }
}
