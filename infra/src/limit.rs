//! Limits on what one client can ask of a service: request rates (per client address, and per
//! user where requests are authenticated), how long a request body may take to arrive, and how
//! long a request may take in all.
//!
//! Rates are enforced with GCRA (the generic cell rate algorithm): per key, one timestamp, the
//! "theoretical arrival time" of the next request at the steady rate. A request is admitted if it
//! comes no earlier than that time minus the burst allowance; each admitted request pushes the
//! time on by one interval. That is a token bucket without a refill loop, exact and O(1).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::Problem;
use crate::http::{MAX_BODY_BYTES, payload_too_large};

/// The limits, from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// `CHRONICLE_RATE_LIMIT_PER_ADDRESS`: requests per second one client address may make on
    /// average (default 200; 0 turns the limit off). Behind a proxy every client has the proxy's
    /// address: turn it off there and limit at the proxy.
    #[arg(
        long = "rate-limit-per-address",
        env = "CHRONICLE_RATE_LIMIT_PER_ADDRESS",
        default_value_t = 200
    )]
    pub per_address: u32,
    /// `CHRONICLE_RATE_LIMIT_BURST_SECS`: how many seconds' worth of requests may come at once
    /// on top of the average (default 5).
    #[arg(
        long = "rate-limit-burst-secs",
        env = "CHRONICLE_RATE_LIMIT_BURST_SECS",
        default_value_t = 5
    )]
    pub burst_secs: u32,
    /// `CHRONICLE_REQUEST_TIMEOUT_MS`: the longest a request may take, body included (default
    /// 10000). A body that has not arrived by then is a 408; a request still being handled is a
    /// 503.
    #[arg(
        long = "request-timeout-ms",
        env = "CHRONICLE_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
}

impl LimitArgs {
    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A limiter of `per_second` requests per key with these bursts (`None` for 0: no limit).
    pub fn limiter<K: Eq + Hash + Clone>(&self, per_second: u32) -> Option<RateLimiter<K>> {
        RateLimiter::new(per_second, self.burst_secs)
    }
}

/// A rate limit per key (GCRA).
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// The steady spacing of requests: 1 / rate.
    interval: Duration,
    /// How far ahead of now a key's next arrival time may run: the burst.
    tolerance: Duration,
    arrivals: Mutex<HashMap<K, Instant>>,
}

/// Keys kept before idle ones are dropped (a key whose arrival time has passed holds no state
/// worth keeping: it would start afresh anyway).
const PRUNE_ABOVE: usize = 10_000;

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `per_second` requests per second on average, with bursts of `burst_secs` seconds' worth;
    /// `None` if `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst_secs: u32) -> Option<RateLimiter<K>> {
        if per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / per_second;
        let burst = per_second.saturating_mul(burst_secs).max(1);
        Some(RateLimiter {
            interval,
            tolerance: interval * (burst - 1),
            arrivals: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a request of `key` at `now`, or says how long until it would be admitted.
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        let next = arrivals.get(key).copied().unwrap_or(now).max(now);
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        if arrivals.len() >= PRUNE_ABOVE && !arrivals.contains_key(key) {
            arrivals.retain(|_, at| *at > now);
        }
        arrivals.insert(key.clone(), next + self.interval);
        Ok(())
    }

    /// [`RateLimiter::check_at`] now, as a 429 problem.
    pub fn check(&self, key: &K) -> Result<(), Problem> {
        self.check_at(key, Instant::now()).map_err(rate_limited)
    }
}

/// 429 `rate_limited`, with `Retry-After`.
pub fn rate_limited(wait: Duration) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down and retry after the time in Retry-After",
    )
    .with_retry_after(wait)
}

struct Limits {
    per_address: Option<RateLimiter<IpAddr>>,
    timeout: Duration,
}

/// Applies the per-address rate limit and the request timeout to every route of `router` (add
/// the routes that must stay reachable, like `/healthz` and `/metrics`, afterwards). The server
/// must be served with connect info (`crate::http::Server` is).
pub fn limit_requests(router: Router, args: &LimitArgs) -> Router {
    let limits = Arc::new(Limits {
        per_address: args.limiter(args.per_address),
        timeout: args.request_timeout(),
    });
    router.layer(middleware::from_fn_with_state(limits, enforce))
}

async fn enforce(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    if let Some(limiter) = &limits.per_address {
        let address = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        if let Some(address) = address
            && let Err(problem) = limiter.check(&address)
        {
            metrics::counter!("http_rate_limited_total", "by" => "address").increment(1);
            return problem.into_response();
        }
    }
    // The body is read here, whole, so that a client sending it slowly gets a 408 of its own
    // rather than holding a handler; handlers then read it from memory.
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(limits.timeout, read_body(body)).await {
        Err(_) => {
            return Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_body",
                format!(
                    "the request body did not arrive within {} ms",
                    limits.timeout.as_millis()
                ),
            )
            .into_response();
        }
        Ok(Err(problem)) => return problem.into_response(),
        Ok(Ok(bytes)) => bytes,
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    let left = limits.timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            // Every wait on the broker is bounded below this (the produce timeout), so what is
            // still pending is the database.
            tracing::warn!(
                timeout_ms = limits.timeout.as_millis(),
                "a request timed out"
            );
            metrics::counter!("http_request_timeouts_total").increment(1);
            Problem::database_unavailable().into_response()
        }
    }
}

/// The whole body, or 413 beyond [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, Problem> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| Problem::invalid_body(format!("the body could not be read: {err}")))?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(payload_too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_steady_rate() {
        // 10 per second, bursts of 1 second's worth: 10 at once, then one per 100 ms.
        let limiter = RateLimiter::new(10, 1).expect("a limit");
        let start = Instant::now();
        for n in 0..10 {
            assert_eq!(limiter.check_at(&"k", start), Ok(()), "request {n}");
        }
        let wait = limiter.check_at(&"k", start).expect_err("the 11th waits");
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(limiter.check_at(&"k", start + wait), Ok(()));
        assert!(limiter.check_at(&"k", start + wait).is_err());
    }

    #[test]
    fn keys_are_limited_separately() {
        let limiter = RateLimiter::new(1, 1).expect("a limit");
        let now = Instant::now();
        assert_eq!(limiter.check_at(&1, now), Ok(()));
        assert!(limiter.check_at(&1, now).is_err());
        assert_eq!(limiter.check_at(&2, now), Ok(()));
    }

    #[test]
    fn an_idle_key_starts_afresh_and_a_rate_of_zero_is_no_limit() {
        let limiter = RateLimiter::new(2, 1).expect("a limit");
        let now = Instant::now();
        assert!(limiter.check_at(&"k", now).is_ok());
        assert!(limiter.check_at(&"k", now).is_ok());
        assert!(limiter.check_at(&"k", now).is_err());
        let later = now + Duration::from_secs(5);
        assert!(limiter.check_at(&"k", later).is_ok());
        assert!(limiter.check_at(&"k", later).is_ok());
        assert!(RateLimiter::<u8>::new(0, 5).is_none());
    }

    #[test]
    fn idle_keys_are_dropped_when_many() {
        let limiter = RateLimiter::new(1000, 1).expect("a limit");
        let now = Instant::now();
        for key in 0..PRUNE_ABOVE {
            assert!(limiter.check_at(&key, now).is_ok());
        }
        let later = now + Duration::from_secs(2);
        assert!(limiter.check_at(&usize::MAX, later).is_ok());
        let kept = limiter
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(kept, 1);
    }
}
