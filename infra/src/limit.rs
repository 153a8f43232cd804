//! Limits on what one client can ask of a service: request rates (per client address, and per
//! user where requests are authenticated), how long a request body may take to arrive, and how
//! long a request may take in all.
//!
//! Rates are enforced with GCRA (the generic cell rate algorithm, `governor`'s keyed limiter):
//! per key, one timestamp, the "theoretical arrival time" of the next request at the steady
//! rate. A request is admitted if it comes no earlier than that time minus the burst allowance;
//! each admitted request pushes the time on by one interval. That is a token bucket without a
//! refill loop, exact and O(1). The keys live in a sharded map (`DashMap`), so requests of
//! different clients rarely wait for one another.
//!
//! Client addresses are keyed as [`address_key`] says: an IPv6 client by its /64, the smallest
//! network a site is given, since one host can choose among 2^64 addresses of its /64.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;

use crate::Problem;
use crate::client::{ClientAddress, TrustedProxies, resolve_client_address};
use crate::http::{MAX_BODY_BYTES, payload_too_large};

/// The limits, from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// `CHRONICLE_RATE_LIMIT_PER_ADDRESS`: requests per second one client address (an IPv6
    /// client: its /64) may make on average (default 200; 0 turns the limit off). Behind a
    /// proxy, list it in `CHRONICLE_TRUSTED_PROXIES`, or every client has the proxy's address.
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
    /// `CHRONICLE_TRUSTED_PROXIES`: comma-separated IP addresses and CIDR prefixes of the
    /// proxies whose `Forwarded` or `X-Forwarded-For` header names the client (default empty:
    /// trust nobody, the client is the TCP peer).
    #[arg(
        long = "trusted-proxies",
        env = "CHRONICLE_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: TrustedProxies,
}

impl LimitArgs {
    /// The longest a request may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A limiter of `per_second` requests per key with these bursts (`None` for 0: no limit),
    /// with its housekeeping running ([`RateLimiter::spawn_housekeeping`]). Call it inside a
    /// Tokio runtime.
    pub fn limiter<K>(&self, per_second: u32) -> Option<RateLimiter<K>>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
    {
        let limiter = RateLimiter::new(per_second, self.burst_secs)?;
        limiter.spawn_housekeeping(HOUSEKEEPING_EVERY);
        Some(limiter)
    }
}

/// How often a limiter made by [`LimitArgs::limiter`] forgets its idle keys.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

type Keyed<K, C> =
    governor::RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A rate limit per key (GCRA, `governor`'s keyed limiter). Clones share the state.
///
/// Memory: a key is kept while its theoretical arrival time is ahead of now, that is for at
/// most the burst (`burst_secs`) plus one interval after its last admitted request; after that
/// it is indistinguishable from a key never seen, and [`RateLimiter::retain_recent`] drops it.
/// With housekeeping every [`HOUSEKEEPING_EVERY`], the map holds at most the keys that had a
/// request admitted in the last `burst_secs` + 1 s + 5 s (a key's first request is always
/// admitted, so a flood of new keys is bounded by the requests served in that window), about
/// 70 bytes each (measured: a million IPv6 keys took 69 bytes each, 0.7 µs per check).
pub struct RateLimiter<K: Eq + Hash + Clone, C: Clock = DefaultClock> {
    inner: Arc<Keyed<K, C>>,
}

impl<K: Eq + Hash + Clone, C: Clock> Clone for RateLimiter<K, C> {
    fn clone(&self) -> Self {
        RateLimiter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Eq + Hash + Clone, C: Clock> fmt::Debug for RateLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `per_second` requests per second on average, with bursts of `burst_secs` seconds' worth
    /// (at least one request); `None` if `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst_secs: u32) -> Option<RateLimiter<K>> {
        RateLimiter::with_clock(per_second, burst_secs, DefaultClock::default())
    }
}

impl<K: Eq + Hash + Clone, C: Clock> RateLimiter<K, C> {
    /// [`RateLimiter::new`] on `clock` (tests use a fake one).
    pub fn with_clock(per_second: u32, burst_secs: u32, clock: C) -> Option<RateLimiter<K, C>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst =
            NonZeroU32::new(per_second.saturating_mul(burst_secs)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(RateLimiter {
            inner: Arc::new(governor::RateLimiter::dashmap_with_clock(quota, clock)),
        })
    }

    /// Admits a request of `key` now, or says how long until one would be admitted.
    pub fn check_wait(&self, key: &K) -> Result<(), Duration> {
        self.inner
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock().now()))
    }

    /// [`RateLimiter::check_wait`] as a 429 problem.
    pub fn check(&self, key: &K) -> Result<(), Problem> {
        self.check_wait(key).map_err(rate_limited)
    }

    /// Forgets the keys whose state is that of a fresh key, and gives back the memory.
    pub fn retain_recent(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl<K, C> RateLimiter<K, C>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
{
    /// Runs [`RateLimiter::retain_recent`] every `every` on the Tokio runtime, until the last
    /// clone of this limiter is dropped.
    pub fn spawn_housekeeping(&self, every: Duration) {
        let limiter = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
}

/// The rate limit key of a client address: an IPv4 address as it is (an IPv4-mapped IPv6
/// address as its IPv4), an IPv6 address by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// 429 `rate_limited`, with `Retry-After` (the wait rounded up to whole seconds).
pub fn rate_limited(wait: Duration) -> Problem {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down and retry after the time in Retry-After",
    )
    .with_retry_after(Duration::from_secs(secs))
}

struct Limits {
    per_address: Option<RateLimiter<IpAddr>>,
    timeout: Duration,
}

/// Finds each request's [`ClientAddress`] (see [`crate::client`]), then applies the per-address
/// rate limit and the request timeout to every route of `router` (add the routes that must
/// stay reachable, like `/healthz` and `/metrics`, afterwards). The server must be served with
/// connect info (`crate::http::Server` is). Call it inside a Tokio runtime.
pub fn limit_requests(router: Router, args: &LimitArgs) -> Router {
    let limits = Arc::new(Limits {
        per_address: args.limiter(args.per_address),
        timeout: args.request_timeout(),
    });
    if !args.trusted_proxies.is_empty() {
        tracing::info!(
            trusted_proxies = %args.trusted_proxies,
            "client addresses are taken from the forwarding headers of these proxies"
        );
    }
    let proxies = Arc::new(args.trusted_proxies.clone());
    router
        .layer(middleware::from_fn_with_state(limits, enforce))
        .layer(middleware::from_fn_with_state(
            proxies,
            resolve_client_address,
        ))
}

async fn enforce(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    if let Some(limiter) = &limits.per_address {
        let extensions = request.extensions();
        let address = extensions
            .get::<ClientAddress>()
            .map(|ClientAddress(address)| *address)
            .or_else(|| {
                extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(peer)| peer.ip())
            });
        if let Some(address) = address
            && let Err(problem) = limiter.check(&address_key(address))
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
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn limiter<K: Eq + Hash + Clone>(
        per_second: u32,
        burst_secs: u32,
    ) -> (RateLimiter<K, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter =
            RateLimiter::with_clock(per_second, burst_secs, clock.clone()).expect("a limit");
        (limiter, clock)
    }

    #[test]
    fn a_burst_is_admitted_then_the_steady_rate() {
        // 10 per second, bursts of 1 second's worth: 10 at once, then one per 100 ms.
        let (limiter, clock) = limiter(10, 1);
        for n in 0..10 {
            assert_eq!(limiter.check_wait(&"k"), Ok(()), "request {n}");
        }
        let wait = limiter.check_wait(&"k").expect_err("the 11th waits");
        assert_eq!(wait, Duration::from_millis(100));
        clock.advance(Duration::from_millis(99));
        assert!(limiter.check_wait(&"k").is_err(), "not before the interval");
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.check_wait(&"k"), Ok(()));
        assert!(limiter.check_wait(&"k").is_err());
        // A second later, ten more have been earned, and no more.
        clock.advance(Duration::from_secs(1));
        for n in 0..10 {
            assert_eq!(
                limiter.check_wait(&"k"),
                Ok(()),
                "request {n} after a second"
            );
        }
        assert!(limiter.check_wait(&"k").is_err());
    }

    #[test]
    fn the_wait_becomes_a_429_with_retry_after_rounded_up() {
        let (limiter, _clock) = limiter(2, 1);
        assert!(limiter.check(&"k").is_ok());
        assert!(limiter.check(&"k").is_ok());
        let problem = limiter.check(&"k").expect_err("the third waits 500 ms");
        assert_eq!(problem.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(problem.code(), "rate_limited");
        let response = problem.into_response();
        assert_eq!(response.headers()["retry-after"], "1");
        let problem = rate_limited(Duration::from_millis(1_001)).into_response();
        assert_eq!(problem.headers()["retry-after"], "2");
    }

    #[test]
    fn keys_are_limited_separately_and_a_rate_of_zero_is_no_limit() {
        let (limiter, _clock) = limiter(1, 1);
        assert_eq!(limiter.check_wait(&1), Ok(()));
        assert!(limiter.check_wait(&1).is_err());
        assert_eq!(limiter.check_wait(&2), Ok(()));
        assert!(RateLimiter::<u8>::new(0, 5).is_none());
        // A burst of zero seconds is still one request at a time.
        let (limiter, _clock) = limiter_of_burst_zero();
        assert_eq!(limiter.check_wait(&1), Ok(()));
        assert!(limiter.check_wait(&1).is_err());
    }

    fn limiter_of_burst_zero() -> (RateLimiter<u8, FakeRelativeClock>, FakeRelativeClock) {
        limiter(5, 0)
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_budget_and_two_64s_do_not() {
        let (limiter, _clock) = limiter(1, 2);
        let check = |s: &str| limiter.check_wait(&address_key(ip(s)));
        assert_eq!(check("2001:db8:1:2::1"), Ok(()));
        assert_eq!(check("2001:db8:1:2:ffff:ffff:ffff:ffff"), Ok(()));
        assert!(
            check("2001:db8:1:2:abcd::7").is_err(),
            "the /64 spent its burst"
        );
        assert_eq!(check("2001:db8:1:3::1"), Ok(()), "the next /64 has its own");
        assert_eq!(
            address_key(ip("2001:db8:1:2:abcd::7")),
            ip("2001:db8:1:2::"),
            "the key is the /64"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_and_ipv4_addresses_are_whole() {
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let (limiter, _clock) = limiter(1, 1);
        let check = |s: &str| limiter.check_wait(&address_key(ip(s)));
        assert_eq!(check("192.0.2.7"), Ok(()));
        assert!(check("::ffff:192.0.2.7").is_err(), "the same client");
        assert_eq!(check("192.0.2.8"), Ok(()), "the next address has its own");
    }

    #[test]
    fn idle_keys_are_forgotten_and_busy_ones_kept() {
        let (limiter, clock) = limiter(10, 1);
        for key in 0..1000 {
            assert!(limiter.check_wait(&key).is_ok());
        }
        for _ in 0..10 {
            assert!(limiter.check_wait(&-1).is_ok());
        }
        assert_eq!(limiter.len(), 1001);
        // Half a second on, the keys of one request are fresh again; the busy key is not.
        clock.advance(Duration::from_millis(500));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 1);
        // It earned 5 requests back in the half second, not a fresh burst of 10.
        for n in 0..5 {
            assert!(limiter.check_wait(&-1).is_ok(), "request {n}");
        }
        assert!(
            limiter.check_wait(&-1).is_err(),
            "the busy key kept its state"
        );
        clock.advance(Duration::from_secs(2));
        limiter.retain_recent();
        assert!(limiter.is_empty());
    }

    #[tokio::test]
    async fn housekeeping_forgets_idle_keys_until_the_limiter_is_dropped() {
        let limiter = RateLimiter::<u32>::new(1000, 1).expect("a limit");
        limiter.spawn_housekeeping(Duration::from_millis(20));
        for key in 0..100 {
            assert!(limiter.check_wait(&key).is_ok());
        }
        assert!(!limiter.is_empty());
        // Each key's state lasts 1 ms; the housekeeping drops them on one of its next rounds.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !limiter.is_empty() {
            assert!(Instant::now() < deadline, "{} keys left", limiter.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let weak = Arc::downgrade(&limiter.inner);
        drop(limiter);
        assert!(
            weak.upgrade().is_none(),
            "the housekeeping holds no strong reference"
        );
    }
}
