//! The read load: profiles and home timelines of random users, through the query API.

use std::sync::Arc;
use std::time::Duration;

use chronicle_tests::bench::{ClosedLoop, Latencies, closed_loop, open_loop};
use chronicle_tests::workload::Rng;

use crate::services::User;

/// Reads/s with `clients` closed-loop clients for `duration`, half profiles, half timelines.
pub(crate) async fn saturation(
    http: &reqwest::Client,
    query: &str,
    users: &[User],
    clients: usize,
    duration: Duration,
) -> f64 {
    closed_loop(clients, duration, |client, n| async move {
        let mut rng = Rng((client as u64) << 32 ^ n ^ 0x94d0_49bb_1331_11eb);
        read(http, query, &users[rng.below(users.len())], n % 2 == 0).await
    })
    .await
    .rate
}

/// Reads at a constant `rate` for `duration`; latencies from when each read was due.
pub(crate) async fn at_rate(
    http: &reqwest::Client,
    query: &str,
    users: &Arc<[User]>,
    rate: f64,
    duration: Duration,
) -> Latencies {
    let (samples, _) = open_loop(rate, duration, |n, due| {
        let user = users[(n as usize * 7919) % users.len()].clone();
        let (http, query) = (http.clone(), query.to_owned());
        async move {
            if read(&http, &query, &user, n % 2 == 0).await {
                Ok(due.elapsed().as_secs_f64() * 1000.0)
            } else {
                Err("read failed".to_owned())
            }
        }
    })
    .await;
    Latencies::sorted(samples)
}

/// The caller's unread count against profile reads, each at saturation with `clients`
/// closed-loop clients: in four turns of a quarter of `duration`, alternating (A B B A) so that
/// a machine whose speed drifts favours neither. Returns (unread counts, profiles).
pub(crate) async fn unread_against_profiles(
    http: &reqwest::Client,
    query: &str,
    users: &[User],
    clients: usize,
    duration: Duration,
) -> (ClosedLoop, ClosedLoop) {
    let turn = duration / 4;
    let (mut unread, mut profiles) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let unread_turn = round % 3 == 0;
        let started = std::time::Instant::now();
        let measured = closed_loop(clients, turn, |client, n| async move {
            let mut rng = Rng((client as u64) << 32 ^ n ^ 0x2545_f491_4f6c_dd1d);
            let user = &users[rng.below(users.len())];
            let request = if unread_turn {
                http.get(format!("{query}/v1/me/notifications/unread-count"))
                    .bearer_auth(&user.token)
            } else {
                http.get(format!("{query}/v1/users/{}", user.id))
            };
            match request.send().await {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        let took = started.elapsed();
        if unread_turn {
            unread.push((measured, took));
        } else {
            profiles.push((measured, took));
        }
    }
    (ClosedLoop::combined(unread), ClosedLoop::combined(profiles))
}

/// Post searches/s with `clients` closed-loop clients for `duration`: `user <n>` (the seeded
/// post of user n), n random among `users`.
pub(crate) async fn search_saturation(
    http: &reqwest::Client,
    query: &str,
    users: usize,
    clients: usize,
    duration: Duration,
) -> ClosedLoop {
    closed_loop(clients, duration, |client, n| async move {
        let mut rng = Rng((client as u64) << 32 ^ n ^ 0x1656_67b1_9e37_79f9);
        let q = format!("user {}", rng.below(users));
        match http
            .get(format!("{query}/v1/search/posts"))
            .query(&[("q", q)])
            .send()
            .await
        {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    })
    .await
}

/// One read of the query API at `query`: a profile, or a home timeline.
async fn read(http: &reqwest::Client, query: &str, user: &User, timeline: bool) -> bool {
    let path = if timeline {
        format!("/v1/users/{}/timeline", user.id)
    } else {
        format!("/v1/users/{}", user.id)
    };
    // The whole answer is read, as a client would: that also frees the connection for the
    // next read (one dropped unread is closed, and the next read pays for a new one).
    match http.get(format!("{query}{path}")).send().await {
        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}
