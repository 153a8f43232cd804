//! What the benchmarks share: a fresh database and topic, the service binaries as child
//! processes, and the report appended to BENCHMARKS.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio_postgres::NoTls;

/// A benchmark's own database and topic, and where the service binaries are.
pub struct Fixture {
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// `CHRONICLE_BIN_DIR`: the release binaries.
    pub bin_dir: String,
    /// A unique id of this run, in the names below.
    pub id: String,
    /// The run's topic, with [`PARTITIONS`] partitions.
    pub topic: String,
    /// The run's database (created empty; the projector migrates it).
    pub database: String,
    /// Its URL.
    pub database_url: String,
    admin: tokio_postgres::Client,
}

impl Fixture {
    /// Creates the database and the topic.
    pub async fn create(what: &str) -> Result<Fixture> {
        let brokers = env("KAFKA_BROKERS", "127.0.0.1:9092");
        let admin_url = env(
            "CHRONICLE_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let bin_dir =
            std::env::var("CHRONICLE_BIN_DIR").map_err(|_| "CHRONICLE_BIN_DIR is not set")?;
        let id = format!("{:x}", chrono::Utc::now().timestamp_millis());
        let database = format!("chronicle_bench_{id}");
        let topic = format!("bench_{id}.events");
        let database_url = with_database(&admin_url, &database);
        let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await?;
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await?;
        create_topic(&brokers, &topic).await?;
        println!("{what} benchmark: topic {topic}, database {database}");
        Ok(Fixture {
            brokers,
            bin_dir,
            id,
            topic,
            database,
            database_url,
            admin,
        })
    }

    /// A connection to the run's database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (db, connection) = tokio_postgres::connect(&self.database_url, NoTls).await?;
        tokio::spawn(connection);
        Ok(db)
    }

    /// Drops the run's database, unless `CHRONICLE_BENCH_KEEP_DATABASE=1` asks to keep it for
    /// a look at the read models (query plans, say) afterwards.
    pub async fn finish(self) -> Result<()> {
        if env("CHRONICLE_BENCH_KEEP_DATABASE", "0") == "1" {
            println!("kept the database {} (drop it when done)", self.database);
            return Ok(());
        }
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.database))
            .await?;
        Ok(())
    }
}

/// Errors of a benchmark run: reported, and the run ends.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The partitions of a benchmark's topic.
pub const PARTITIONS: i32 = 12;

/// Environment variable `name`, or `default`.
pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates `topic` with [`PARTITIONS`] partitions and infinite retention.
pub async fn create_topic(brokers: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new =
        NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &options).await? {
        result.map_err(|(name, code)| format!("cannot create {name}: {code}"))?;
    }
    Ok(())
}

/// `target/bench`, where the benchmarks leave their logs and `latest.json`; created if missing.
fn bench_dir() -> Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `binary` with `args` and the environment `vars`; its log (the services log to
/// stdout) goes to `target/bench/<binary>.log`, replaced at each start.
pub fn spawn(binary: &str, args: &[&str], vars: &[(&str, String)]) -> Result<Child> {
    let dir = bench_dir()?;
    let name = std::path::Path::new(binary)
        .file_name()
        .ok_or_else(|| format!("{binary} names no file"))?;
    let log = dir.join(name).with_extension("log");
    let child = Command::new(binary)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .spawn()?;
    println!(
        "started {} (pid {}), log {}",
        binary,
        child.id(),
        log.display()
    );
    Ok(child)
}

/// Polls the active generation's offsets every 20 ms until they cover at least `events`
/// (a benchmark may poll); returns how many they cover.
pub async fn wait_until_projected(db: &tokio_postgres::Client, events: i64) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let done: Option<i64> = db
            .query_opt(
                "SELECT sum(next_offset)::bigint FROM projection.offsets o
                 JOIN projection.generations g ON g.name = o.generation AND g.state = 'active'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get(0));
        if let Some(done) = done.filter(|done| *done >= events) {
            return Ok(done);
        }
        if Instant::now() > deadline {
            return Err("the live projector did not catch up within an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends a section titled `title` with `table` and `summary` to BENCHMARKS.md, with the
/// machine and the git revision.
fn append_to_benchmarks(title: &str, table: &str, summary: &str) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let root_arg = root.display().to_string();
    let mut revision = run("git", &["-C", &root_arg, "rev-parse", "--short=7", "HEAD"]);
    // Changes to the code, not the entries a run of `script/bench` has just appended.
    let changed = run(
        "git",
        &[
            "-C",
            &root_arg,
            "status",
            "--porcelain",
            "--",
            ".",
            ":!BENCHMARKS.md",
        ],
    );
    if !changed.is_empty() {
        revision.push_str("-dirty");
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / 1024 / 1024));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let entry = format!(
        "\n## {title} — {} (rev {revision})\n\nMachine: {cores} cores, {cpu}{memory}; broker tansu \
         0.6.0 (libsql), PostgreSQL, the services in release builds, all on this one machine.\n\n{table}\n{summary}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    let path = root.join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nAppended by `script/bench`. Absolute numbers drift on shared machines; \
         the ratios, measured side by side in one run, are what to compare.\n"
            .to_owned()
    });
    text.push_str(&entry);
    std::fs::write(&path, text)?;
    println!("appended to {}", path.display());
    Ok(())
}

/// One measured line: what, Chronicle's figure, its baseline's in the same run, the unit, and
/// the goal.
pub struct Measure {
    /// What was measured.
    pub name: &'static str,
    /// Chronicle's figure.
    pub value: f64,
    /// The baseline's, where the measure has one.
    pub baseline: Option<f64>,
    /// The unit of both.
    pub unit: &'static str,
    /// The goal, as written in the issue (a ratio, or a bound on the value).
    pub goal: &'static str,
}

/// Prints `measures` as a table with `notes` below, appends both to BENCHMARKS.md under
/// `title`, and adds the measures (name, value, baseline, ratio, unit) to
/// `target/bench/latest.json`, which `script/bench` empties at the start of each run.
pub fn report(title: &str, measures: &[Measure], notes: &[String]) -> Result<()> {
    use std::fmt::Write as _;
    let mut table = String::new();
    writeln!(table, "| measure | Chronicle | baseline | ratio | goal |")?;
    writeln!(table, "|---|---:|---:|---:|---|")?;
    let mut json = Vec::new();
    for m in measures {
        let ratio = m.baseline.map(|b| m.value / b);
        writeln!(
            table,
            "| {} | {:.1} {} | {} | {} | {} |",
            m.name,
            m.value,
            m.unit,
            m.baseline
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.1} {}", m.unit)),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            m.goal
        )?;
        json.push(serde_json::json!({
            "name": m.name,
            "value": m.value,
            "baseline": m.baseline,
            "ratio": ratio,
            "unit": m.unit,
        }));
    }
    let summary = notes
        .iter()
        .map(|note| format!("- {note}"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("\n{table}\n{summary}");
    append_to_benchmarks(title, &table, &summary)?;
    let path = bench_dir()?.join("latest.json");
    let mut all: Vec<serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    all.extend(json);
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    println!("wrote {}", path.display());
    Ok(())
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

/// The broker's own freshness, the floor under Chronicle's: a bare producer (acks=all,
/// idempotent, as the command API) sends `rate` events per second for `duration` to `topic`
/// (fresh, [`PARTITIONS`] partitions), each on the clock; a bare consumer with the projector's
/// fetch settings (`fetch.wait.max.ms` = `fetch_wait_ms`) reads them. Each sample is the time
/// from the send's acknowledgement to the consumer's receipt, in milliseconds (0 when the
/// consumer had it first).
pub async fn broker_freshness(
    brokers: &str,
    topic: &str,
    rate: f64,
    duration: Duration,
    fetch_wait_ms: u32,
) -> Result<Vec<f64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let total = (rate * duration.as_secs_f64()) as usize;
    let received: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.freshness"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let reader = {
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let at = Instant::now();
                let n = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<usize>().ok());
                if let (Some(n), Ok(mut received)) = (n, received.lock())
                    && let Some(slot) = received.get_mut(n)
                {
                    *slot = Some(at);
                }
            }
        })
    };
    // Let the consumer connect and send its first fetch before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let (acknowledged, failures) = open_loop(rate, duration, |n, _due| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            let key = n.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload("freshness"),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(err, _)| format!("send: {err}"))?;
            Ok((n as usize, Instant::now()))
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .any(Option::is_none)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().map_err(|_| "the consumer thread panicked")?;
    let received = received.lock().map_err(|_| "poisoned")?;
    let samples: Vec<f64> = acknowledged
        .iter()
        .filter_map(|(n, ack)| {
            let got = received[*n]?;
            Some(got.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
        })
        .collect();
    if samples.len() < total * 99 / 100 {
        return Err(format!(
            "the bare consumer received {} of {total}; failed sends: {failures:?}",
            samples.len()
        )
        .into());
    }
    Ok(samples)
}

/// CPU time used so far by each part of the machine a benchmark runs on: the services (by
/// pid), the broker (`CHRONICLE_BENCH_BROKER_PID`, set by `script/bench`), every PostgreSQL
/// process, and everything else. Two snapshots around a measure tell which part the machine's
/// cores went to.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    seconds: std::collections::BTreeMap<String, f64>,
    at: Option<Instant>,
}

impl CpuUse {
    /// Reads `/proc` now; `named` are (name, pid) of the processes to tell apart.
    pub fn now(named: &[(&str, u32)]) -> CpuUse {
        let broker = std::env::var("CHRONICLE_BENCH_BROKER_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let mut seconds = std::collections::BTreeMap::new();
        let ticks = 100.0; // USER_HZ on Linux
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return CpuUse::default();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ... utime stime cutime cstime: fields 14 to 17, the 12th
            // to 15th after the ')'. A process that ended and was waited for adds its time to
            // its parent's cutime and cstime: PostgreSQL's backends to the postmaster's, pgbench
            // to this benchmark's.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map_or("", |(_, comm)| comm);
            let fields: Vec<f64> = tail
                .split_whitespace()
                .skip(11)
                .take(4)
                .map(|field| field.parse().unwrap_or(0.0) / ticks)
                .collect();
            let (own, children) = match fields[..] {
                [utime, stime, cutime, cstime] => (utime + stime, cutime + cstime),
                _ => continue,
            };
            if pid == std::process::id() {
                *seconds.entry("benchmark client".to_owned()).or_insert(0.0) += own;
                // Its children: pgbench, and services it stopped (none while measuring).
                *seconds.entry("pgbench".to_owned()).or_insert(0.0) += children;
                continue;
            }
            let used = own + children;
            let name = if let Some((name, _)) = named.iter().find(|(_, p)| *p == pid) {
                (*name).to_owned()
            } else if Some(pid) == broker {
                "broker (tansu)".to_owned()
            } else if comm == "postgres" {
                "postgres".to_owned()
            } else if comm == "pgbench" {
                "pgbench".to_owned()
            } else {
                "everything else".to_owned()
            };
            *seconds.entry(name).or_insert(0.0) += used;
        }
        CpuUse {
            seconds,
            at: Some(Instant::now()),
        }
    }

    /// What each part used since `before`, in cores (CPU seconds per second), largest first:
    /// "postgres 0.71, query-api 0.42, ..." and the machine's total.
    pub fn since(&self, before: &CpuUse) -> String {
        let elapsed = match (self.at, before.at) {
            (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
            _ => return "not measured".to_owned(),
        };
        let mut used: Vec<(String, f64)> = self
            .seconds
            .iter()
            .map(|(name, secs)| {
                let earlier = before.seconds.get(name).copied().unwrap_or(0.0);
                // Processes that ended in between make "everything else" shrink; not below 0.
                (name.clone(), ((secs - earlier) / elapsed).max(0.0))
            })
            .filter(|(_, cores)| *cores >= 0.005)
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = used.iter().map(|(_, cores)| cores).sum();
        let parts: Vec<String> = used
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        format!("{}; {total:.2} of {cores} cores busy", parts.join(", "))
    }
}
