//! The stack benchmark: Chronicle's three jobs, each next to the best this machine does with
//! the same broker and database, measured in one run:
//!
//! - command ingest at saturation (2xx commands/s), next to a bare rdkafka producer sending the
//!   same events to the same broker with the same acks;
//! - freshness at 1,000 commands/s (or half the broker's saturation rate, where that is lower):
//!   from a command's 202 to its post being readable, next to the broker alone (a bare producer
//!   to a bare consumer with the projector's fetch settings);
//! - reads at saturation (profile and home timeline), next to pgbench running the same SQL, and
//!   their latency at half that rate, next to pgbench's at the same rate;
//! - peak memory (VmHWM) of each service.
//!
//! Load at a set rate is scheduled on a clock, and each latency is measured from the moment its
//! request was due, not from when it was sent: a stall counts against every request it delays
//! (no coordinated omission). The CPU each part of the machine used during the latency measures
//! is in the notes: on two shared cores it says which part bounds them. Run it with
//! `script/bench stack`.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chronicle_events::{Envelope, Event, PostLiked};
use chronicle_tests::bench::{
    CpuUse, Fixture, Measure, PARTITIONS, Result, broker_freshness, create_topic, env, open_loop,
    report, spawn, wait_until_projected,
};
use chronicle_tests::workload::{Rng, Zipf};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use uuid::Uuid;

const FOLLOWS_PER_USER: usize = 10;
const SATURATION_CLIENTS: usize = 64;
/// Clients of the read measures, for the query API and pgbench alike (the database allows 100
/// connections, and the services hold some).
const READ_CLIENTS: usize = 32;
const MEASURE: Duration = Duration::from_secs(10);
const FRESHNESS_RATE: u64 = 1_000;

struct Stack {
    http: reqwest::Client,
    command: String,
    query: String,
    services: Vec<(&'static str, Child)>,
}

/// The projector's `fetch.wait.max.ms` in this run: `CHRONICLE_PROJECTOR_FETCH_WAIT_MS`, or
/// the benchmark's default, handed to the projector so that both sides use the same.
fn fetch_wait_ms() -> u32 {
    env("CHRONICLE_PROJECTOR_FETCH_WAIT_MS", "20")
        .parse()
        .unwrap_or(20)
}

/// The population: `CHRONICLE_BENCH_USERS` users (default 2,000).
fn population() -> usize {
    env("CHRONICLE_BENCH_USERS", "2000").parse().unwrap_or(2000)
}

#[tokio::main]
async fn main() -> Result<()> {
    let users_count = population();
    let fixture = Fixture::create("stack").await?;
    let mut stack = Stack::start(&fixture).await?;
    let db = fixture.connect().await?;

    // A population: users, a follow graph, a post each.
    let started = Instant::now();
    let users = stack.seed(&db).await?;
    let events = i64::try_from(users_count * (2 + FOLLOWS_PER_USER))?;
    wait_until_projected(&db, events).await?;
    println!(
        "seeded {users_count} users, {} follows, {users_count} posts in {:.1} s",
        users_count * FOLLOWS_PER_USER,
        started.elapsed().as_secs_f64()
    );

    let mut measures = Vec::new();
    let mut notes = Vec::new();

    // 1. Command ingest at saturation, and a bare producer sending likes to the same topic,
    //    which the projector consumes just the same.
    let ingest = stack.ingest(&users).await?;
    let bare = bare_producer(&fixture.brokers, &fixture.topic).await?;
    println!(
        "ingest: {:.0} commands/s ({}); bare producer {bare:.0}/s",
        ingest.rate, ingest.latency
    );
    measures.push(Measure {
        name: "command ingest at saturation (2xx commands/s)",
        value: ingest.rate,
        baseline: Some(bare),
        unit: "commands/s",
        goal: ">= 0.8",
    });
    notes.push(format!(
        "ingest: {SATURATION_CLIENTS} clients for {} s (50% likes and 10% unlikes of Zipf-popular posts, 25% posts, 15% follows); command latency {}; bare producer: {SATURATION_CLIENTS} sends in flight of likes to the same topic, acks=all, idempotent, linger.ms=2",
        MEASURE.as_secs(),
        ingest.latency
    ));

    // 2. Freshness at 1,000 commands/s, or at half the saturation rate where the broker cannot
    //    take 1,000 (a backlog of unanswered commands would measure the queue, not freshness).
    //    Its floor, the broker alone, is measured at the end, once the services are stopped.
    let rate = FRESHNESS_RATE.min((ingest.rate / 2.0) as u64).max(1);
    let before = stack.cpu();
    let freshness = stack.freshness(&users, rate).await?;
    let freshness_cpu = stack.cpu().since(&before);
    println!("freshness at {rate}/s: {}", freshness.summary());

    // 3. Reads at saturation, next to pgbench; latency at half the rate, next to pgbench's at
    //    the same rate.
    let reads = stack.read_saturation(&users).await?;
    let pgbench = Pgbench::prepare(&fixture.database_url, &db, &users).await?;
    let pgbench_reads = pgbench.saturation()?;
    let half = (reads / 2.0).max(1.0);
    let before = stack.cpu();
    let latency = stack.reads_at(&users, half).await?;
    let latency_cpu = stack.cpu().since(&before);
    let before = stack.cpu();
    let pgbench_latency = pgbench.at(half)?;
    let pgbench_cpu = stack.cpu().since(&before);
    drop(pgbench);
    println!(
        "reads: {reads:.0}/s (pgbench {pgbench_reads:.0}/s); at {half:.0}/s {} (pgbench {})",
        latency.summary(),
        pgbench_latency.summary()
    );

    // 4. Peak memory of each service, then the services stop.
    let peaks: Vec<(&str, f64)> = stack
        .services
        .iter()
        .map(|(name, child)| (*name, peak_rss_mib(child.id())))
        .collect();
    stack.stop();

    // The broker alone at the freshness rate: a send's acknowledgement to a consumer with the
    // projector's fetch settings, with nothing else running.
    let floor_topic = format!("{}.freshness", fixture.topic);
    create_topic(&fixture.brokers, &floor_topic).await?;
    let floor = Latencies::sorted(
        broker_freshness(
            &fixture.brokers,
            &floor_topic,
            rate as f64,
            MEASURE,
            fetch_wait_ms(),
        )
        .await?,
    );
    println!("the broker alone at {rate}/s: {}", floor.summary());

    measures.push(Measure {
        name: "freshness: 202 -> readable, p50 (baseline: the broker alone)",
        value: freshness.p(0.5),
        baseline: Some(floor.p(0.5)),
        unit: "ms",
        goal: "<= 10 ms",
    });
    measures.push(Measure {
        name: "freshness: 202 -> readable, p99 (baseline: the broker alone)",
        value: freshness.p(0.99),
        baseline: Some(floor.p(0.99)),
        unit: "ms",
        goal: "<= 50 ms",
    });
    notes.push(format!(
        "freshness: {rate} publishes/s (the goal's rate is {FRESHNESS_RATE}/s) for {} s, each \
         read back with its position: {}; CPU meanwhile: {freshness_cpu}. The broker alone at \
         the same rate, services stopped (bare producer, acks=all, to a bare consumer with the \
         projector's fetch.wait.max.ms={}): {}",
        MEASURE.as_secs(),
        freshness.summary(),
        fetch_wait_ms(),
        floor.summary()
    ));
    measures.push(Measure {
        name: "reads at saturation (profile + home timeline, reads/s)",
        value: reads,
        baseline: Some(pgbench_reads),
        unit: "reads/s",
        goal: ">= 0.6",
    });
    measures.push(Measure {
        name: "read latency at half that rate, p99 (baseline: pgbench at the same rate)",
        value: latency.p(0.99),
        baseline: Some(pgbench_latency.p(0.99)),
        unit: "ms",
        goal: "<= 5 ms",
    });
    notes.push(format!(
        "reads: {READ_CLIENTS} clients, half profiles, half home timelines; pgbench runs the \
         same statements, one read per transaction, {READ_CLIENTS} clients, prepared. At \
         {half:.0} reads/s: query API {}, CPU meanwhile: {latency_cpu}; pgbench (Poisson \
         arrivals) {}, CPU meanwhile: {pgbench_cpu}",
        latency.summary(),
        pgbench_latency.summary()
    ));
    for (name, peak) in peaks {
        measures.push(Measure {
            name: match name {
                "command-api" => "peak RSS: command-api",
                "query-api" => "peak RSS: query-api",
                _ => "peak RSS: projector",
            },
            value: peak,
            baseline: None,
            unit: "MiB",
            goal: "<= 64 MiB",
        });
    }

    report("stack", &measures, &notes)?;
    drop(db);
    fixture.finish().await
}

fn free_address() -> Result<String> {
    Ok(format!("127.0.0.1:{}", chronicle_tests::free_port()?))
}

/// A user of the benchmark: id and token.
#[derive(Clone)]
struct User {
    id: String,
    token: String,
    post: String,
}

/// Latencies in milliseconds.
struct Latencies(Vec<f64>);

impl Latencies {
    fn p(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let index = ((self.0.len() as f64 * quantile).ceil() as usize).clamp(1, self.0.len());
        self.0[index - 1]
    }

    fn summary(&self) -> String {
        format!(
            "{} samples, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            self.0.len(),
            self.p(0.5),
            self.p(0.99),
            self.p(0.999)
        )
    }

    fn sorted(mut samples: Vec<f64>) -> Latencies {
        samples.sort_by(f64::total_cmp);
        Latencies(samples)
    }
}

struct Ingest {
    rate: f64,
    latency: String,
}

impl Stack {
    async fn start(fixture: &Fixture) -> Result<Stack> {
        let command = free_address()?;
        let query = free_address()?;
        let vars = [
            ("KAFKA_BROKERS", fixture.brokers.clone()),
            ("CHRONICLE_TOPIC", fixture.topic.clone()),
            ("CHRONICLE_PARTITIONS", PARTITIONS.to_string()),
            ("DATABASE_URL", fixture.database_url.clone()),
            (
                "CHRONICLE_PROJECTOR_GROUP",
                format!("bench_{}.projector", fixture.id),
            ),
            ("CHRONICLE_PROJECTOR_ADDR", "127.0.0.1:0".to_owned()),
            ("CHRONICLE_COMMAND_ADDR", command.clone()),
            ("CHRONICLE_QUERY_ADDR", query.clone()),
            (
                "CHRONICLE_JWT_SECRET",
                "bench-secret-bench-secret-bench-secret-0123".to_owned(),
            ),
            (
                "CHRONICLE_PROJECTOR_FETCH_WAIT_MS",
                fetch_wait_ms().to_string(),
            ),
            ("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "0".to_owned()),
            ("CHRONICLE_RATE_LIMIT_PER_USER", "0".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let bin_dir = &fixture.bin_dir;
        let mut services = Vec::new();
        // The projector first: it migrates the read models.
        services.push((
            "projector",
            spawn(&format!("{bin_dir}/projector"), &[], &vars)?,
        ));
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        services.push((
            "command-api",
            spawn(&format!("{bin_dir}/command-api"), &[], &vars)?,
        ));
        services.push((
            "query-api",
            spawn(&format!("{bin_dir}/query-api"), &[], &vars)?,
        ));
        let stack = Stack {
            http,
            command: format!("http://{command}"),
            query: format!("http://{query}"),
            services,
        };
        for base in [&stack.command, &stack.query] {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stack
                .http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                if Instant::now() > deadline {
                    return Err(format!("{base} did not come up within 60 s").into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(stack)
    }

    /// CPU used so far by each service and the rest of the machine.
    fn cpu(&self) -> CpuUse {
        let named: Vec<(&str, u32)> = self
            .services
            .iter()
            .map(|(name, child)| (*name, child.id()))
            .collect();
        CpuUse::now(&named)
    }

    /// Stops the services (SIGTERM, then waits); a benchmark that fails stops them too.
    fn stop(&mut self) {
        for (_, mut child) in self.services.drain(..) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Sends a command; the JSON answer if it was a success.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.command));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Registers users, then (once the read models know them) a post each and the follows.
    async fn seed(&self, db: &tokio_postgres::Client) -> Result<Vec<User>> {
        let users_count = population();
        let registered = run_all(users_count, 32, |i| async move {
            let answer = self
                .command(
                    reqwest::Method::POST,
                    "/v1/users",
                    None,
                    Some(json!({ "handle": format!("bench_{i}"), "display_name": format!("Bench {i}") })),
                )
                .await?;
            Some((
                answer["user_id"].as_str()?.to_owned(),
                answer["token"].as_str()?.to_owned(),
            ))
        })
        .await;
        let registered: Vec<(String, String)> = registered.into_iter().flatten().collect();
        if registered.len() != users_count {
            return Err(format!("registered {} of {users_count} users", registered.len()).into());
        }
        // Follows and likes name users and posts the command API looks up in the read models.
        wait_until_projected(db, i64::try_from(users_count)?).await?;
        let posts = run_all(users_count, 32, |i| {
            let token = registered[i].1.clone();
            async move {
                let answer = self
                    .command(
                        reqwest::Method::POST,
                        "/v1/posts",
                        Some(&token),
                        Some(json!({ "body": format!("hello from bench user {i}") })),
                    )
                    .await?;
                Some(answer["post_id"].as_str()?.to_owned())
            }
        })
        .await;
        let users: Vec<User> = registered
            .into_iter()
            .zip(posts)
            .map(|((id, token), post)| User {
                id,
                token,
                post: post.unwrap_or_default(),
            })
            .collect();
        // Each follows a few users, popular ones more often (squares skew towards low indexes).
        let users = &users;
        let follows = run_all(users_count * FOLLOWS_PER_USER, 32, |n| {
            let follower = &users[n / FOLLOWS_PER_USER];
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            let (a, b) = (rng.below(users_count), rng.below(users_count));
            let mut followee = &users[(a * b) / users_count];
            if followee.id == follower.id {
                // Following oneself is refused; follow the next user instead.
                followee = &users[(n / FOLLOWS_PER_USER + 1) % users_count];
            }
            async move {
                self.command(
                    reqwest::Method::PUT,
                    &format!("/v1/users/me/following/{}", followee.id),
                    Some(&follower.token),
                    None,
                )
                .await
            }
        })
        .await;
        let failed = follows.iter().filter(|f| f.is_none()).count();
        if failed > 0 || users.iter().any(|u| u.post.is_empty()) {
            return Err(format!("seeding failed ({failed} follows)").into());
        }
        Ok(users.clone())
    }

    /// Closed-loop clients sending likes, unlikes, publishes and follows as fast as answers
    /// come. Likes and unlikes go to the posts of Zipf-distributed users: a few popular posts
    /// get most of them.
    async fn ingest(&self, users: &[User]) -> Result<Ingest> {
        let popularity = &Zipf::new(users.len());
        let (rate, latencies) = closed_loop(SATURATION_CLIENTS, |client, n| async move {
            let mut rng = Rng((client as u64) << 32 ^ n ^ 0x2545_f491_4f6c_dd1d);
            let me = rng.below(users.len());
            let user = &users[me];
            // Anyone but the user (following oneself is refused).
            let other = &users[(me + 1 + rng.below(users.len() - 1)) % users.len()];
            let liked = &users[popularity.sample(&mut rng, users.len())];
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
            self.command(method, &path, Some(&user.token), body)
                .await
                .is_some()
        })
        .await;
        Ok(Ingest {
            rate,
            latency: latencies.summary(),
        })
    }

    /// Publishes at a constant rate; each post is read back with its position, and the time
    /// from the 202 to the read's answer is the freshness.
    async fn freshness(&self, users: &[User], rate: u64) -> Result<Latencies> {
        let (samples, failures) = open_loop(rate as f64, MEASURE, |n, _due| {
            let user = users[n as usize % users.len()].clone();
            let (http, command, query) =
                (self.http.clone(), self.command.clone(), self.query.clone());
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
                Ok(acknowledged.elapsed().as_secs_f64() * 1000.0)
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
        Ok(Latencies::sorted(samples))
    }

    async fn read_saturation(&self, users: &[User]) -> Result<f64> {
        let (rate, _) = closed_loop(READ_CLIENTS, |client, n| async move {
            let mut rng = Rng((client as u64) << 32 ^ n ^ 0x94d0_49bb_1331_11eb);
            read(
                &self.http,
                &self.query,
                &users[rng.below(users.len())],
                n % 2 == 0,
            )
            .await
        })
        .await;
        Ok(rate)
    }

    /// Reads at a constant `rate`; latencies from when each read was due.
    async fn reads_at(&self, users: &[User], rate: f64) -> Result<Latencies> {
        let (samples, _) = open_loop(rate, MEASURE, |n, due| {
            let user = users[(n as usize * 7919) % users.len()].clone();
            let (http, query) = (self.http.clone(), self.query.clone());
            async move {
                if read(&http, &query, &user, n % 2 == 0).await {
                    Ok(due.elapsed().as_secs_f64() * 1000.0)
                } else {
                    Err("read failed".to_owned())
                }
            }
        })
        .await;
        Ok(Latencies::sorted(samples))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
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

/// Runs `clients` clients, each repeating `step(client, n)` as soon as its last
/// one answered, for [`MEASURE`]: successful steps per second, and their latencies.
async fn closed_loop<'a, F, Fut>(clients: usize, step: F) -> (f64, Latencies)
where
    F: Fn(usize, u64) -> Fut + 'a,
    Fut: std::future::Future<Output = bool> + 'a,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let clients = (0..clients).map(|client| {
        let (stop, done, step) = (&stop, &done, &step);
        async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if step(client, n).await {
                    done.fetch_add(1, Ordering::Relaxed);
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                n += 1;
            }
            latencies
        }
    });
    let timer = async {
        tokio::time::sleep(MEASURE).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (latencies, ()) = tokio::join!(futures_util::future::join_all(clients), timer);
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (
        rate,
        Latencies::sorted(latencies.into_iter().flatten().collect()),
    )
}

/// Runs `count` jobs, `parallel` at a time, and returns their results in order.
async fn run_all<'a, F, Fut, T>(count: usize, parallel: usize, job: F) -> Vec<Option<T>>
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

/// The baseline of ingest: a bare producer with the command API's settings, as many sends in
/// flight as the benchmark has clients, for the same time. Events per second acknowledged.
async fn bare_producer(brokers: &str, topic: &str) -> Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()?;
    let producer = &producer;
    let (rate, _) = closed_loop(SATURATION_CLIENTS, |_, _| async move {
        let envelope = Envelope::new(
            Uuid::now_v7(),
            Event::PostLiked(PostLiked {
                post_id: Uuid::now_v7(),
                user_id: Uuid::now_v7(),
            }),
        );
        let key = envelope.aggregate_id().to_string();
        let payload = envelope.to_json();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .is_ok()
    })
    .await;
    Ok(rate)
}

/// The baseline of reads: pgbench running the query API's statements, one read per
/// transaction (profiles and home timelines, half each, of a random user), as many clients,
/// prepared.
struct Pgbench {
    database_url: String,
    scripts: Vec<std::path::PathBuf>,
}

impl Pgbench {
    /// Writes the scripts; a table maps pgbench's random numbers to the users' ids, looked up
    /// inside each statement (an index probe, not a round trip).
    async fn prepare(
        database_url: &str,
        db: &tokio_postgres::Client,
        users: &[User],
    ) -> Result<Pgbench> {
        db.batch_execute(
            "CREATE TABLE public.bench_users (n int PRIMARY KEY, user_id uuid NOT NULL)",
        )
        .await?;
        for (n, user) in users.iter().enumerate() {
            db.execute(
                "INSERT INTO public.bench_users VALUES ($1, $2::text::uuid)",
                &[&i32::try_from(n + 1)?, &user.id],
            )
            .await?;
        }
        let schema: String = db
            .query_one(
                "SELECT 'read_' || name FROM projection.generations WHERE state = 'active'",
                &[],
            )
            .await?
            .get(0);
        let pick = format!("\\set n random(1, {})\n", users.len());
        let id = "(SELECT user_id FROM public.bench_users WHERE n = :n)";
        // The profile; its following count is named for the timeline's `\\gset`.
        let profile_sql = format!(
            "SELECT u.user_id, u.handle, u.display_name, u.bio, u.joined_at, coalesce(c.post_count, 0), coalesce(c.follower_count, 0), coalesce(c.following_count, 0) AS following, coalesce(c.likes_received, 0), coalesce(c.likes_given, 0) FROM {schema}.users u LEFT JOIN {schema}.user_counters c ON c.user_id = u.user_id WHERE u.user_id = {id}"
        );
        let profile = format!("{pick}{profile_sql};\n");
        // The query API's two statements: the user's profile (how many they follow), then
        // their timeline merged per author (up to 200 followees, as every seeded user here) or
        // filtered from the global feed.
        let page = "(p.published_at, p.post_id) < ('infinity'::timestamptz, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)";
        let columns = "p.post_id, p.body, p.published_at, p.like_count, u.user_id, u.handle, u.display_name, p.reply_to, coalesce(c.reply_count, 0)";
        let joins = format!(
            "JOIN {schema}.users u ON u.user_id = p.author_id LEFT JOIN {schema}.post_counters c ON c.post_id = p.post_id"
        );
        let newest = "ORDER BY p.published_at DESC, p.post_id DESC";
        let timeline = format!(
            "{pick}{profile_sql} \\gset
\\if :following <= 200
SELECT {columns} FROM (SELECT p.* FROM (SELECT {id} AS author_id UNION SELECT followee_id FROM {schema}.follows WHERE follower_id = {id}) a CROSS JOIN LATERAL (SELECT * FROM {schema}.posts p WHERE p.author_id = a.author_id AND p.deleted_at IS NULL AND {page} {newest} LIMIT 21) p {newest} LIMIT 21) p {joins} {newest};
\\else
SELECT {columns} FROM {schema}.posts p {joins} WHERE p.deleted_at IS NULL AND (p.author_id = {id} OR p.author_id IN (SELECT followee_id FROM {schema}.follows WHERE follower_id = {id})) AND {page} {newest} LIMIT 21;
\\endif
"
        );
        let mut scripts = Vec::new();
        for (name, script) in [("profile", profile), ("timeline", timeline)] {
            let path = std::env::temp_dir().join(format!(
                "chronicle-pgbench-{}-{name}.sql",
                std::process::id()
            ));
            std::fs::write(&path, script)?;
            scripts.push(path);
        }
        Ok(Pgbench {
            database_url: database_url.to_owned(),
            scripts,
        })
    }

    /// Reads/s as fast as pgbench goes.
    fn saturation(&self) -> Result<f64> {
        self.run(&[])
    }

    /// Reads scheduled at `rate` per second: each one's latency from when it was due, as
    /// pgbench measures it under `--rate`.
    fn at(&self, rate: f64) -> Result<Latencies> {
        let logs =
            std::env::temp_dir().join(format!("chronicle-pgbench-{}-log", std::process::id()));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        let prefix = logs.join("read");
        self.run(&[
            "--rate".to_owned(),
            format!("{rate:.0}"),
            "--log".to_owned(),
            format!("--log-prefix={}", prefix.display()),
        ])?;
        // Each line: client, transaction, latency (µs), script, epoch s, epoch µs, lag (µs).
        let mut samples = Vec::new();
        for file in std::fs::read_dir(&logs)? {
            for line in std::fs::read_to_string(file?.path())?.lines() {
                if let Some(micros) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    samples.push(micros / 1000.0);
                }
            }
        }
        std::fs::remove_dir_all(&logs)?;
        Ok(Latencies::sorted(samples))
    }

    fn run(&self, extra: &[String]) -> Result<f64> {
        let mut command = Command::new("pgbench");
        command
            .args(["-n", "-M", "prepared", "-j", "2"])
            .args(["-c", &READ_CLIENTS.to_string()])
            .args(["-T", &MEASURE.as_secs().to_string()])
            .args(extra);
        for script in &self.scripts {
            command.arg("-f").arg(format!("{}@1", script.display()));
        }
        let output = command.arg(&self.database_url).output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find(|line| line.starts_with("tps = "))
            .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok())
            .ok_or_else(|| {
                format!(
                    "pgbench failed: {}{}",
                    text,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        Ok(tps)
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        for script in &self.scripts {
            let _ = std::fs::remove_file(script);
        }
    }
}

/// The most memory the process has held (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
