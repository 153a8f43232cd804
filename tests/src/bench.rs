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

    /// Drops the run's database.
    pub async fn finish(self) -> Result<()> {
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

/// Starts `binary` with `args` and the environment `vars`, its output discarded.
pub fn spawn(binary: &str, args: &[&str], vars: &[(&str, String)]) -> Result<Child> {
    Ok(Command::new(binary)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?)
}

/// Polls the active generation's offsets until they cover `events` (a benchmark may poll).
pub async fn wait_until_projected(db: &tokio_postgres::Client, events: i64) -> Result<()> {
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
        if done.is_some_and(|done| done >= events) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the live projector did not catch up within an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Appends a section titled `title` with `table` and `summary` to BENCHMARKS.md, with the
/// machine and the git revision.
pub fn append_to_benchmarks(title: &str, table: &str, summary: &str) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let revision = run(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
            "--abbrev=7",
        ],
    );
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
