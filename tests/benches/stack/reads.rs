//! The read load: profiles and home timelines of random users, through the query API.

use std::sync::Arc;
use std::time::Duration;

use chronicle_tests::bench::{Latencies, closed_loop, open_loop};
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
