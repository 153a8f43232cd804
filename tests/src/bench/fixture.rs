//! A benchmark's own database and topic, its settings from the environment, and the service
//! binaries started as child processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_postgres::NoTls;

use super::report::{self, Measure};

/// Errors of a benchmark run: reported, and the run ends.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The partitions of a benchmark's topic.
pub const PARTITIONS: i32 = 12;

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
    /// The server's `server_version`, for the report.
    postgres_version: String,
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
        let postgres_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
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
            postgres_version,
            admin,
        })
    }

    /// A connection to the run's database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (db, connection) = tokio_postgres::connect(&self.database_url, NoTls).await?;
        tokio::spawn(connection);
        Ok(db)
    }

    /// Prints `measures` as a table with `notes` below, appends both to BENCHMARKS.md under
    /// `title` (unless `CHRONICLE_BENCH_APPEND=0`), and adds the measures to
    /// `target/bench/latest.json`, which `script/bench` empties at the start of each run.
    pub fn report(&self, title: &str, measures: &[Measure], notes: &[String]) -> Result<()> {
        report::report(title, &self.postgres_version, measures, notes)
    }

    /// Waits until the live projector has applied every event the topic holds now.
    pub async fn settle(&self, db: &tokio_postgres::Client) -> Result<()> {
        let end = topic_end(&self.brokers, &self.topic).await?;
        wait_until_projected(db, end).await?;
        Ok(())
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

/// Environment variable `name`, or `default`.
pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Environment variable `name` parsed, or `default` when it is unset; a value that does not
/// parse is an error that names the variable.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value} is not a valid value").into()),
        Err(_) => Ok(default),
    }
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

/// How many events `topic` holds: the sum of its partitions' high watermarks (its offsets are
/// contiguous from 0: no transactions, no compaction).
pub async fn topic_end(brokers: &str, topic: &str) -> Result<i64> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> Result<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let mut end = 0;
        for partition in 0..PARTITIONS {
            let (_, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            end += high;
        }
        Ok(end)
    })
    .await?
}

/// `target/bench`, where the benchmarks leave their logs and `latest.json`; created if missing.
pub(super) fn bench_dir() -> Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `target/bench/<name>.log`, where [`spawn`] sends the output of the process it names `name`.
pub fn log_path(name: &str) -> Result<std::path::PathBuf> {
    Ok(bench_dir()?.join(format!("{name}.log")))
}

/// Starts `program` with `args` and the environment `vars`; its log (the services log to
/// stdout) goes to [`log_path`]`(name)`, replaced at each start.
pub fn spawn(
    name: &str,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    vars: &[(&str, String)],
) -> Result<Child> {
    let log = log_path(name)?;
    let child = Command::new(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .spawn()?;
    println!("started {name} (pid {}), log {}", child.id(), log.display());
    Ok(child)
}

/// Polls the active generation's offsets every 20 ms until they cover at least `events`;
/// returns how many they cover.
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
