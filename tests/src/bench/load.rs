//! Load, as fast as answers come (closed loop) or on a clock (open loop), and the latencies it
//! met.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::fixture::{Result, env_parse};

/// How long each measure runs: `CHRONICLE_BENCH_SECONDS` (default 10; a smoke run of the
/// benchmarks can use 2 or 3).
pub fn measure_time() -> Result<Duration> {
    let seconds: f64 = env_parse("CHRONICLE_BENCH_SECONDS", 10.0)?;
    if seconds.is_nan() || seconds < 1.0 {
        return Err(format!("CHRONICLE_BENCH_SECONDS={seconds} is below 1").into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Latencies in milliseconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<f64>);

impl Latencies {
    /// Sorts `samples` (milliseconds).
    pub fn sorted(mut samples: Vec<f64>) -> Latencies {
        samples.sort_by(f64::total_cmp);
        Latencies(samples)
    }

    /// The `quantile` (0.5 for the median), NaN without samples.
    pub fn p(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let index = ((self.0.len() as f64 * quantile).ceil() as usize).clamp(1, self.0.len());
        self.0[index - 1]
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// "N samples, p50 .. ms, p99 .. ms, p99.9 .. ms".
    pub fn summary(&self) -> String {
        format!(
            "{} samples, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            self.0.len(),
            self.p(0.5),
            self.p(0.99),
            self.p(0.999)
        )
    }
}

/// Freshness: how long after a write a reader had it, on two clocks.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// From when the write was due (the open loop's clock): the write's own latency included.
    pub from_due: Latencies,
    /// From the write's acknowledgement; negative where the reader had it first.
    pub from_ack: Latencies,
}

impl Freshness {
    /// From (from due, from acknowledgement) samples, in milliseconds.
    pub fn of(samples: impl IntoIterator<Item = (f64, f64)>) -> Freshness {
        let (from_due, from_ack): (Vec<f64>, Vec<f64>) = samples.into_iter().unzip();
        Freshness {
            from_due: Latencies::sorted(from_due),
            from_ack: Latencies::sorted(from_ack),
        }
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.from_due.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.from_due.is_empty()
    }

    /// The share of samples the reader had before the write's acknowledgement.
    pub fn before_ack(&self) -> f64 {
        let early = self.from_ack.0.iter().filter(|ms| **ms < 0.0).count();
        early as f64 / self.len().max(1) as f64
    }
}

/// Starts `job(n, due)` at `rate` per second for `duration`, each on the clock whether or not
/// earlier ones have answered (no coordinated omission). What the jobs that succeeded returned,
/// and how often each failure happened.
pub async fn open_loop<T, F, Fut>(
    rate: f64,
    duration: Duration,
    job: F,
) -> (Vec<T>, std::collections::BTreeMap<String, usize>)
where
    T: Send + 'static,
    F: Fn(u64, tokio::time::Instant) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        tasks.spawn(job(n, due));
    }
    let mut done = Vec::new();
    let mut failures = std::collections::BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(value)) => done.push(value),
            Ok(Err(failure)) => *failures.entry(failure).or_default() += 1,
            Err(err) => *failures.entry(err.to_string()).or_default() += 1,
        }
    }
    (done, failures)
}

/// What a closed loop did.
#[derive(Debug, Clone, Default)]
pub struct ClosedLoop {
    /// Successful steps per second.
    pub rate: f64,
    /// Steps that failed.
    pub failed: u64,
    /// The successful steps' latencies, from send to answer.
    pub latencies: Latencies,
}

impl ClosedLoop {
    /// Several measures of the same load as one: `parts` with how long each ran. The rate is
    /// over their whole time, the failures and latencies are all of theirs.
    pub fn combined(parts: Vec<(ClosedLoop, std::time::Duration)>) -> ClosedLoop {
        let seconds: f64 = parts.iter().map(|(_, took)| took.as_secs_f64()).sum();
        let done: f64 = parts
            .iter()
            .map(|(part, took)| part.rate * took.as_secs_f64())
            .sum();
        let failed = parts.iter().map(|(part, _)| part.failed).sum();
        let samples = parts
            .into_iter()
            .flat_map(|(part, _)| part.latencies.0)
            .collect();
        ClosedLoop {
            rate: if seconds > 0.0 { done / seconds } else { 0.0 },
            failed,
            latencies: Latencies::sorted(samples),
        }
    }
}

/// Runs `clients` clients, each repeating `step(client, n)` as soon as its last one answered,
/// for `duration`.
pub async fn closed_loop<'a, F, Fut>(clients: usize, duration: Duration, step: F) -> ClosedLoop
where
    F: Fn(usize, u64) -> Fut + 'a,
    Fut: std::future::Future<Output = bool> + 'a,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let started = Instant::now();
    let clients = (0..clients).map(|client| {
        let (stop, done, failed, step) = (&stop, &done, &failed, &step);
        async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if step(client, n).await {
                    done.fetch_add(1, Ordering::Relaxed);
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            latencies
        }
    });
    let timer = async {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (latencies, ()) = tokio::join!(futures_util::future::join_all(clients), timer);
    ClosedLoop {
        rate: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
        latencies: Latencies::sorted(latencies.into_iter().flatten().collect()),
    }
}

/// Runs `count` jobs, `parallel` at a time, and returns their results in order.
pub async fn run_all<'a, F, Fut, T>(count: usize, parallel: usize, job: F) -> Vec<Option<T>>
where
    F: Fn(usize) -> Fut + 'a,
    Fut: std::future::Future<Output = Option<T>> + 'a,
{
    use futures_util::StreamExt;
    futures_util::stream::iter(0..count)
        .map(&job)
        .buffered(parallel)
        .collect()
        .await
}
