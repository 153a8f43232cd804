//! The test harness: one isolated Chronicle per test, made of real processes.
//!
//! [`TestApp::spawn`] creates a fresh Postgres database, a fresh topic and a fresh consumer group,
//! then starts the real `projector`, `command-api` and `query-api` binaries as child processes
//! pointed at them. Tests talk to the services only through HTTP (and, where a test must, Kafka
//! and SQL). Every child is killed when the `TestApp` is dropped; their output is kept under
//! `target/e2e-logs/<database>/`.
//!
//! Tests never sleep to let the projector catch up: they pass the positions returned by commands
//! as `min_position` and, where they need to block, call [`TestApp::wait_for`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// Partitions of a test topic unless the test asks for another count.
pub(crate) const DEFAULT_PARTITIONS: u32 = 4;
/// How long a service may take to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`TestApp::wait_for`] waits for the read models to reach a set of positions.
pub(crate) const WAIT_DEADLINE: Duration = Duration::from_secs(60);
/// At most this many `min_position` parameters go into one request (keeps URLs short).
const POSITIONS_PER_REQUEST: usize = 100;
/// The largest page the query API serves.
pub(crate) const MAX_LIMIT: u32 = 100;

/// No positions: the request does not wait for the read models.
pub(crate) const NO_POSITIONS: &[String] = &[];

/// Where the harness finds the broker, Postgres and the service binaries.
#[derive(Debug, Clone)]
struct HarnessEnv {
    /// `KAFKA_BROKERS`, default `127.0.0.1:9092`.
    kafka_brokers: String,
    /// `CHRONICLE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`.
    admin_database_url: String,
    /// `CHRONICLE_BIN_DIR`, default the directory the test binary was built into.
    bin_dir: PathBuf,
    /// `<target dir>/e2e-logs`.
    log_root: PathBuf,
}

impl HarnessEnv {
    fn from_env() -> HarnessEnv {
        let kafka_brokers =
            non_empty_var("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".into());
        let admin_database_url = non_empty_var("CHRONICLE_TEST_DATABASE_URL")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent directory")
            .to_path_buf();
        let target_dir = match non_empty_var("CARGO_TARGET_DIR") {
            Some(dir) => workspace_root.join(dir),
            None => default_target_dir(&workspace_root),
        };
        let bin_dir = match non_empty_var("CHRONICLE_BIN_DIR") {
            Some(dir) => workspace_root.join(dir),
            None => default_bin_dir(&target_dir),
        };
        HarnessEnv {
            kafka_brokers,
            admin_database_url,
            bin_dir,
            log_root: target_dir.join("e2e-logs"),
        }
    }

    fn binary(&self, name: &str) -> PathBuf {
        let path = self
            .bin_dir
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.is_file(),
            "the `{name}` binary is missing at {} — build the services first with \
             `cargo build --workspace --bins`, or point CHRONICLE_BIN_DIR at their directory",
            path.display()
        );
        path
    }
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The target directory this test binary was built in (`<target>/debug/deps/e2e-…` → `<target>`),
/// falling back to `<workspace>/target`.
fn default_target_dir(workspace_root: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            let profile = deps.parent()?;
            (deps.file_name()? == "deps").then(|| profile.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| workspace_root.join("target"))
}

/// The profile directory the test binary was built in (`<target>/debug`), where
/// `cargo build --workspace --bins` puts the service binaries.
fn default_bin_dir(target_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| target_dir.join("debug"))
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| i + authority_start);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Opens a Postgres connection, panicking with a clear message when the server is unreachable.
pub(crate) async fn connect_postgres(url: &str) -> tokio_postgres::Client {
    // Parsed as the services parse DATABASE_URL, so that admin URLs with libpq's sslmode work.
    let config = chronicle_infra::db::PgConfig::parse(url)
        .unwrap_or_else(|e| panic!("unusable Postgres URL {}: {e}", redact(url)));
    let connecting = config.connect();
    let (client, connection) = tokio::time::timeout(Duration::from_secs(15), connecting)
        .await
        .unwrap_or_else(|_| panic!("timed out connecting to Postgres at {}", redact(url)))
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to Postgres at {} ({e}); start it, or set \
                 CHRONICLE_TEST_DATABASE_URL to an admin URL",
                redact(url)
            )
        });
    tokio::spawn(async move {
        // Ends when the client is dropped; an error here surfaces on the next query.
        let _ = connection.await;
    });
    client
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.to_owned(),
    }
}

fn check_broker_reachable(brokers: &str) {
    let first = brokers.split(',').next().unwrap_or(brokers).trim();
    let addrs: Vec<_> = first
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("KAFKA_BROKERS={brokers:?}: cannot resolve {first:?}: {e}"))
        .collect();
    let reachable = addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, Duration::from_secs(5)).is_ok());
    assert!(
        reachable,
        "the Kafka broker at {first} is unreachable — start one (see script/ and BROKER.md) or set \
         KAFKA_BROKERS to its bootstrap address"
    );
}

/// Creates `topic` with `partitions` partitions of `replicas` replicas each and infinite
/// retention (the log is the truth).
async fn create_topic(brokers: &str, topic: &str, partitions: u32, replicas: u32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("failed to create a Kafka admin client");
    let new_topic = NewTopic::new(
        topic,
        i32::try_from(partitions).expect("partition count fits in i32"),
        TopicReplication::Fixed(i32::try_from(replicas).expect("replica count fits in i32")),
    )
    .set("retention.ms", "-1");
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic} on the broker at {brokers}: {e}"));
    for result in results {
        if let Err((name, code)) = result {
            panic!("the broker at {brokers} refused to create topic {name}: {code:?}");
        }
    }
}

/// A random alphanumeric string of `len` characters (good enough for test secrets).
fn random_alphanumeric(len: usize, rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())]))
        .collect()
}

/// A small deterministic random number generator (SplitMix64), so tests need no extra crate and
/// can print their seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator that yields the same sequence for the same seed.
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from the random bits of a fresh UUIDv7 and the clock.
    pub(crate) fn from_entropy() -> Rng {
        let uuid = uuid::Uuid::now_v7().as_u128();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mixed = uuid ^ nanos.rotate_left(64);
        // Folding 128 bits into 64 keeps all of their entropy that fits.
        Rng((mixed as u64) ^ ((mixed >> 64) as u64))
    }

    /// The seed-equivalent state, to print for reproduction.
    pub(crate) fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// A duration uniformly between `low_ms` and `high_ms` milliseconds.
    pub(crate) fn millis_between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.next_u64() % (high_ms - low_ms + 1))
    }

    /// A random element of `items`, or `None` when it is empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }
}

/// One running service process. Killed (SIGKILL) and reaped on drop.
struct ServiceProcess {
    name: String,
    child: Child,
    url: String,
    log_path: PathBuf,
}

impl ServiceProcess {
    fn kill(&mut self) {
        // Fails only when the process already exited, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a service needs to start: the binary and the environment shared by every service.
#[derive(Clone)]
struct Launcher {
    harness: HarnessEnv,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    counters: Arc<Mutex<HashMap<String, usize>>>,
}

impl Launcher {
    /// A command for the binary at `path` with this test's environment and nothing inherited
    /// that could point it elsewhere.
    fn command(&self, path: &Path) -> Command {
        let mut command = Command::new(path);
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("CHRONICLE_")
                || key_str.starts_with("KAFKA_")
                || key_str == "DATABASE_URL"
                || key_str == "RUST_LOG"
            {
                command.env_remove(&key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs `binary` with `args` to completion (a CLI, not a service) in the services'
    /// environment, and returns what it printed and whether it succeeded.
    fn run(&self, binary: &str, args: &[&str]) -> std::process::Output {
        let path = self.harness.binary(binary);
        let mut command = self.command(&path);
        command
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    /// Starts `binary` and returns once it printed `listening on http://…` (blocking).
    fn start(&self, binary: &str) -> ServiceProcess {
        self.start_with(binary, &[])
    }

    /// [`Launcher::start`] with `extra` environment variables on top of the test's.
    fn start_with(&self, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let path = self.harness.binary(binary);
        let index = {
            let mut counters = self.counters.lock().expect("launcher counters lock");
            let counter = counters.entry(binary.to_owned()).or_insert(0);
            let index = *counter;
            *counter += 1;
            index
        };
        let name = format!("{binary}-{index}");
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log_file = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log_path.display()));
        let log_file = Arc::new(Mutex::new(log_file));

        let mut command = self.command(&path);
        command
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));

        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        drain(Box::new(stdout), "", log_file.clone(), lines_tx.clone());
        drain(Box::new(stderr), "[stderr] ", log_file, lines_tx);

        let mut process = ServiceProcess {
            name: name.clone(),
            child,
            url: String::new(),
            log_path: log_path.clone(),
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut captured = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(url) = parse_listening_url(&line) {
                        process.url = url;
                        return process;
                    }
                    captured.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    process.kill();
                    panic!(
                        "{name} did not print `listening on http://…` within {}s (log: {}); \
                         its output so far:\n{}",
                        STARTUP_TIMEOUT.as_secs(),
                        log_path.display(),
                        captured.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = process.child.wait();
                    panic!(
                        "{name} exited before listening ({status:?}; log: {}); its output:\n{}",
                        log_path.display(),
                        captured.join("\n")
                    );
                }
            }
        }
    }
}

/// Copies every line of `stream` into the log file and into `lines` (while someone listens),
/// so the child's pipes never fill.
fn drain(
    stream: Box<dyn Read + Send>,
    prefix: &'static str,
    log: Arc<Mutex<File>>,
    lines: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if let Ok(mut file) = log.lock() {
                        let _ = writeln!(file, "{prefix}{line}");
                    }
                    // Nobody listens once the service is up: the send fails and we keep draining.
                    let _ = lines.send(line);
                }
            }
        }
    });
}

/// Finds `http://host:port` after `listening on` in a log line (ANSI colours stripped).
fn parse_listening_url(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let after = &plain[plain.find("listening on")?..];
    let start = after.find("http://")? + "http://".len();
    let address: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']' | '-'))
        .collect();
    address
        .contains(':')
        .then(|| format!("http://{}", address.trim_end_matches(['.', ':'])))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ parameters final-byte.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A directory for what a test keeps outside its database (`<target dir>/e2e-scratch`).
pub(crate) fn scratch_dir() -> PathBuf {
    HarnessEnv::from_env()
        .log_root
        .with_file_name("e2e-scratch")
}

/// How to build a [`TestApp`].
#[derive(Debug, Clone)]
pub(crate) struct TestAppBuilder {
    partitions: u32,
    consistency_wait_ms: u64,
    projectors: usize,
    /// Service settings on top of the harness's own.
    env: Vec<(String, String)>,
    /// The Postgres server to create the test database on, instead of the harness's.
    admin_database_url: Option<String>,
    /// The broker to use instead of the harness's.
    kafka_brokers: Option<String>,
    /// Replicas of each partition of the test topic.
    replication_factor: u32,
}

impl TestAppBuilder {
    /// Partitions of the test topic (`CHRONICLE_PARTITIONS`).
    pub(crate) fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// `CHRONICLE_CONSISTENCY_WAIT_MS` of the services.
    pub(crate) fn consistency_wait_ms(mut self, millis: u64) -> Self {
        self.consistency_wait_ms = millis;
        self
    }

    /// How many projector processes start in the consumer group.
    pub(crate) fn projectors(mut self, count: usize) -> Self {
        self.projectors = count;
        self
    }

    /// Creates the test database on the server at `admin_url` (a URL of any database there).
    pub(crate) fn database_server(mut self, admin_url: &str) -> Self {
        self.admin_database_url = Some(admin_url.to_owned());
        self
    }

    /// Uses the broker at `brokers` instead of the harness's.
    pub(crate) fn broker(mut self, brokers: &str) -> Self {
        self.kafka_brokers = Some(brokers.to_owned());
        self
    }

    /// Replicas of each partition of the test topic (default 1), also the services'
    /// `CHRONICLE_REPLICATION_FACTOR`; more than 1 needs a cluster ([`Self::broker`]).
    pub(crate) fn replication_factor(mut self, replicas: u32) -> Self {
        self.replication_factor = replicas;
        self
    }

    /// Sets environment variable `name` of every service.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates the database and topic and starts the services.
    pub(crate) async fn spawn(self) -> TestApp {
        TestApp::start(self).await
    }
}

/// An isolated Chronicle: its own database, topic and consumer group, and its own processes.
pub(crate) struct TestApp {
    /// The per-test id, also the suffix of the database, topic and group names.
    pub(crate) id: String,
    /// The test database's name.
    pub(crate) database: String,
    /// URL of the test database.
    pub(crate) database_url: String,
    /// The test topic.
    pub(crate) topic: String,
    /// The projectors' consumer group.
    pub(crate) group: String,
    /// The broker bootstrap address.
    pub(crate) kafka_brokers: String,
    /// The partition count of the test topic.
    pub(crate) partitions: u32,
    /// The JWT secret the services sign and check tokens with.
    pub(crate) jwt_secret: String,
    /// Base URL of the command API.
    pub(crate) command_url: String,
    /// Base URL of the query API.
    pub(crate) query_url: String,
    /// HTTP client for tests.
    pub(crate) client: reqwest::Client,
    env: HarnessEnv,
    launcher: Launcher,
    log_dir: PathBuf,
    command_api: Mutex<Option<ServiceProcess>>,
    query_api: Mutex<Option<ServiceProcess>>,
    projectors: Mutex<Vec<ServiceProcess>>,
}

impl TestApp {
    /// A builder with the defaults: 4 partitions, a 10 s consistency wait, one projector. The
    /// wait is long because a projector that has just started may still be joining its group
    /// while parallel tests load the machine (a clean-clone CI run saw a 2 s wait end in
    /// `stale_read`); tests of the stale read itself set a short one.
    pub(crate) fn builder() -> TestAppBuilder {
        TestAppBuilder {
            partitions: DEFAULT_PARTITIONS,
            consistency_wait_ms: 10_000,
            projectors: 1,
            env: Vec::new(),
            admin_database_url: None,
            kafka_brokers: None,
            replication_factor: 1,
        }
    }

    /// A Chronicle with the default settings.
    pub(crate) async fn spawn() -> TestApp {
        TestApp::builder().spawn().await
    }

    async fn start(builder: TestAppBuilder) -> TestApp {
        let mut env = HarnessEnv::from_env();
        if let Some(url) = &builder.admin_database_url {
            env.admin_database_url.clone_from(url);
        }
        if let Some(brokers) = &builder.kafka_brokers {
            env.kafka_brokers.clone_from(brokers);
        }
        // Fail early, with a clear message, when a binary is missing.
        for binary in ["projector", "command-api", "query-api"] {
            env.binary(binary);
        }

        // A UUIDv7 starts with the clock, so tests started in the same millisecond would share
        // its first 12 characters: take 12 characters of its random tail instead.
        let id = {
            let simple = uuid::Uuid::now_v7().simple().to_string();
            simple[simple.len() - 12..].to_owned()
        };
        let database = format!("chronicle_t_{id}");
        let topic = format!("t_{id}.events");
        let group = format!("t_{id}.projector");
        let mut rng = Rng::from_entropy();
        let jwt_secret = random_alphanumeric(48, &mut rng);

        // Kafka first (nothing to clean up if it is down), then Postgres: a fresh, empty
        // database; the services migrate it.
        check_broker_reachable(&env.kafka_brokers);
        let admin = connect_postgres(&env.admin_database_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {database}: {e}"));
        drop(admin);
        let database_url = with_database(&env.admin_database_url, &database);

        // The test topic, created up front because the broker does not auto-create topics.
        create_topic(
            &env.kafka_brokers,
            &topic,
            builder.partitions,
            builder.replication_factor,
        )
        .await;

        let log_dir = env.log_root.join(&database);
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));

        let service_env: Vec<(String, String)> = [
            ("KAFKA_BROKERS", env.kafka_brokers.clone()),
            ("CHRONICLE_TOPIC", topic.clone()),
            ("CHRONICLE_PARTITIONS", builder.partitions.to_string()),
            (
                "CHRONICLE_REPLICATION_FACTOR",
                builder.replication_factor.to_string(),
            ),
            ("DATABASE_URL", database_url.clone()),
            ("CHRONICLE_JWT_SECRET", jwt_secret.clone()),
            ("CHRONICLE_COMMAND_ADDR", "127.0.0.1:0".to_owned()),
            ("CHRONICLE_QUERY_ADDR", "127.0.0.1:0".to_owned()),
            ("CHRONICLE_PROJECTOR_ADDR", "127.0.0.1:0".to_owned()),
            ("CHRONICLE_PROJECTOR_GROUP", group.clone()),
            ("CHRONICLE_LOG_FORMAT", "text".to_owned()),
            (
                "CHRONICLE_CONSISTENCY_WAIT_MS",
                builder.consistency_wait_ms.to_string(),
            ),
            // A slow acknowledgement under the load of parallel tests must not become a 503
            // (tests that want the broker's outage to show set their own).
            ("CHRONICLE_PRODUCE_TIMEOUT_MS", "30000".to_owned()),
            ("CHRONICLE_REQUEST_TIMEOUT_MS", "60000".to_owned()),
            // Tests drive load from one address and a few users; the limits have their own test.
            ("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "0".to_owned()),
            ("CHRONICLE_RATE_LIMIT_PER_USER", "0".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(builder.env.iter().cloned())
        .collect();

        let launcher = Launcher {
            harness: env.clone(),
            env: service_env,
            log_dir: log_dir.clone(),
            counters: Arc::new(Mutex::new(HashMap::new())),
        };

        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build()
            .expect("failed to build the HTTP client");

        let app = TestApp {
            id,
            database,
            database_url,
            topic,
            group,
            kafka_brokers: env.kafka_brokers.clone(),
            partitions: builder.partitions,
            jwt_secret,
            command_url: String::new(),
            query_url: String::new(),
            client,
            env,
            launcher,
            log_dir,
            command_api: Mutex::new(None),
            query_api: Mutex::new(None),
            projectors: Mutex::new(Vec::new()),
        };

        // Start order: the projector(s) first (so migrations run once, before the APIs), then
        // the command and query APIs in parallel.
        for _ in 0..builder.projectors {
            app.start_projector().await;
        }
        let command_launcher = app.launcher.clone();
        let query_launcher = app.launcher.clone();
        let command = tokio::task::spawn_blocking(move || command_launcher.start("command-api"));
        let query = tokio::task::spawn_blocking(move || query_launcher.start("query-api"));
        let (command, query) = (
            command
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            query
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );

        let mut app = app;
        app.command_url = command.url.clone();
        app.query_url = query.url.clone();
        *app.command_api.lock().expect("command-api lock") = Some(command);
        *app.query_api.lock().expect("query-api lock") = Some(query);
        app
    }

    /// Where this test's service logs are written.
    pub(crate) fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts one more projector process in the test's consumer group.
    pub(crate) async fn start_projector(&self) {
        let launcher = self.launcher.clone();
        let projector = tokio::task::spawn_blocking(move || launcher.start("projector"))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.projectors
            .lock()
            .expect("projectors lock")
            .push(projector);
    }

    /// Kills (SIGKILL) every running projector process.
    pub(crate) fn kill_projector(&self) {
        let mut projectors = self.projectors.lock().expect("projectors lock");
        for mut projector in projectors.drain(..) {
            projector.kill();
        }
    }

    /// Kills (SIGKILL) the `index`th of the running projector processes (in start order) and
    /// returns its log file; the others go on.
    pub(crate) fn kill_projector_at(&self, index: usize) -> PathBuf {
        let mut projectors = self.projectors.lock().expect("projectors lock");
        assert!(
            index < projectors.len(),
            "there are only {} projectors",
            projectors.len()
        );
        let mut projector = projectors.remove(index);
        projector.kill();
        projector.log_path.clone()
    }

    /// Kills (SIGKILL) the command API.
    pub(crate) fn kill_command_api(&self) {
        if let Some(mut process) = self.command_api.lock().expect("command-api lock").take() {
            process.kill();
        }
    }

    /// Starts the command API again, on the address it had (after [`TestApp::kill_command_api`]).
    pub(crate) async fn start_command_api(&self) {
        let launcher = self.launcher.clone();
        let address = self.command_url.trim_start_matches("http://").to_owned();
        let process = tokio::task::spawn_blocking(move || {
            launcher.start_with("command-api", &[("CHRONICLE_COMMAND_ADDR", &address)])
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        *self.command_api.lock().expect("command-api lock") = Some(process);
    }

    /// Kills every projector and starts a fresh one.
    pub(crate) async fn restart_projector(&self) {
        self.kill_projector();
        self.start_projector().await;
    }

    /// How many projector processes are running (not yet killed and not exited).
    pub(crate) fn running_projectors(&self) -> usize {
        let mut projectors = self.projectors.lock().expect("projectors lock");
        projectors
            .iter_mut()
            .map(|p| matches!(p.child.try_wait(), Ok(None)))
            .filter(|running| *running)
            .count()
    }

    /// Base URL of the first running projector's HTTP server.
    pub(crate) fn projector_url(&self) -> Option<String> {
        let projectors = self.projectors.lock().expect("projectors lock");
        projectors.first().map(|p| p.url.clone())
    }

    /// Panics unless every service process is still alive (a crashed service explains many
    /// strange failures, so tests check it at the end).
    pub(crate) fn assert_services_alive(&self) {
        let mut dead = Vec::new();
        for slot in [&self.command_api, &self.query_api] {
            let mut slot = slot.lock().expect("service lock");
            if let Some(process) = slot.as_mut()
                && let Ok(Some(status)) = process.child.try_wait()
            {
                dead.push(format!(
                    "{} ({status}, log {})",
                    process.name,
                    process.log_path.display()
                ));
            }
        }
        for process in self.projectors.lock().expect("projectors lock").iter_mut() {
            if let Ok(Some(status)) = process.child.try_wait() {
                dead.push(format!(
                    "{} ({status}, log {})",
                    process.name,
                    process.log_path.display()
                ));
            }
        }
        assert!(
            dead.is_empty(),
            "service processes exited: {}",
            dead.join(", ")
        );
    }

    // ----- raw requests -------------------------------------------------------------------

    /// A request to the command API.
    pub(crate) fn command(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.command_url))
    }

    /// A GET request to the query API.
    pub(crate) fn query(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.query_url))
    }

    /// Sends a request and reads the whole answer.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Resp {
        let response = request.send().await.unwrap_or_else(|e| {
            panic!(
                "HTTP request failed: {e} (service logs: {})",
                self.log_dir.display()
            )
        });
        Resp::read(response).await
    }

    // ----- commands -----------------------------------------------------------------------

    /// `POST /v1/users`.
    pub(crate) async fn register(&self, handle: &str, display_name: &str) -> Resp {
        self.register_with(json!({ "handle": handle, "display_name": display_name }))
            .await
    }

    /// `POST /v1/users` with an arbitrary JSON body.
    pub(crate) async fn register_with(&self, body: Value) -> Resp {
        self.send(self.command(Method::POST, "/v1/users").json(&body))
            .await
    }

    /// Appends `payload` keyed `key` straight to the test topic (to `partition` if given), as
    /// a foreign producer would, bypassing the command API.
    pub(crate) async fn produce_raw(&self, key: &str, partition: Option<i32>, payload: &[u8]) {
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("failed to create a Kafka producer");
        let mut record = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("failed to produce to {}: {e}", self.topic));
    }

    /// A consumer of the test topic outside the projector's group, reading every partition
    /// from the beginning. It blocks: use it inside `spawn_blocking`.
    pub(crate) fn topic_reader(&self, name: &str) -> rdkafka::consumer::BaseConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("group.id", format!("t_{}.{name}", self.id))
            .set("enable.auto.commit", "false")
            .create()
            .expect("failed to create a Kafka consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in 0..self.partitions {
            let partition = i32::try_from(partition).expect("partition fits in i32");
            assignment
                .add_partition_offset(&self.topic, partition, rdkafka::Offset::Beginning)
                .expect("valid partition offset");
        }
        consumer
            .assign(&assignment)
            .expect("failed to assign the topic's partitions");
        consumer
    }

    /// Runs `projector <args>` (its operator subcommands) against this test's database and
    /// topic, and returns (exit success, stdout, stderr).
    pub(crate) async fn projector_cli(&self, args: &[&str]) -> (bool, String, String) {
        let launcher = self.launcher.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            launcher.run("projector", &args)
        })
        .await
        .expect("the CLI task panicked");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Registers a user and returns it, asserting `201`.
    pub(crate) async fn register_user(&self, handle: &str, display_name: &str) -> TestUser {
        let resp = self.register(handle, display_name).await;
        resp.assert_status(201);
        TestUser {
            id: resp.str_field("user_id"),
            handle: resp.str_field("handle"),
            token: resp.str_field("token"),
            position: resp.str_field("position"),
        }
    }

    /// `POST /v1/posts`.
    pub(crate) async fn publish(&self, token: &str, body: &str) -> Resp {
        self.send(
            self.command(Method::POST, "/v1/posts")
                .bearer_auth(token)
                .json(&json!({ "body": body })),
        )
        .await
    }

    /// Publishes a post and returns it, asserting `202`.
    pub(crate) async fn publish_post(&self, author: &TestUser, body: &str) -> TestPost {
        let resp = self.publish(&author.token, body).await;
        resp.assert_status(202);
        TestPost {
            id: resp.str_field("post_id"),
            author: author.id.clone(),
            position: resp.str_field("position"),
        }
    }

    /// `DELETE /v1/posts/{post_id}`.
    pub(crate) async fn delete_post(
        &self,
        token: &str,
        post_id: &str,
        positions: &[String],
    ) -> Resp {
        let path = format!("/v1/posts/{post_id}");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PUT /v1/posts/{post_id}/like`.
    pub(crate) async fn like(&self, token: &str, post_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/posts/{post_id}/like");
        self.authed(Method::PUT, &path, token, positions).await
    }

    /// `DELETE /v1/posts/{post_id}/like`.
    pub(crate) async fn unlike(&self, token: &str, post_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/posts/{post_id}/like");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PUT /v1/users/me/following/{user_id}`.
    pub(crate) async fn follow(&self, token: &str, user_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/users/me/following/{user_id}");
        self.authed(Method::PUT, &path, token, positions).await
    }

    /// `DELETE /v1/users/me/following/{user_id}`.
    pub(crate) async fn unfollow(&self, token: &str, user_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/users/me/following/{user_id}");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PATCH /v1/users/me`.
    pub(crate) async fn update_profile(&self, token: &str, body: Value) -> Resp {
        self.send(
            self.command(Method::PATCH, "/v1/users/me")
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    async fn authed(&self, method: Method, path: &str, token: &str, positions: &[String]) -> Resp {
        let request = self.command(method, path).bearer_auth(token);
        self.send(with_positions(request, positions)).await
    }

    // ----- queries ------------------------------------------------------------------------

    /// `GET path` on the query API, waiting for `positions`.
    pub(crate) async fn get(&self, path: &str, positions: &[String]) -> Resp {
        self.send(with_positions(self.query(path), positions)).await
    }

    /// `GET /v1/users/{id}`.
    pub(crate) async fn get_user(&self, user_id: &str, positions: &[String]) -> Resp {
        self.get(&format!("/v1/users/{user_id}"), positions).await
    }

    /// `GET /v1/posts/{id}`.
    pub(crate) async fn get_post(&self, post_id: &str, positions: &[String]) -> Resp {
        self.get(&format!("/v1/posts/{post_id}"), positions).await
    }

    /// One page of a list endpoint.
    pub(crate) async fn get_page(
        &self,
        path: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
        positions: &[String],
    ) -> Resp {
        let mut request = self.query(path);
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit.to_string())]);
        }
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        self.send(with_positions(request, positions)).await
    }

    /// Every item of a list endpoint, following `next_cursor` with pages of `limit`.
    pub(crate) async fn collect_pages_with(
        &self,
        path: &str,
        limit: u32,
        positions: &[String],
    ) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let resp = self
                .get_page(path, Some(limit), cursor.as_deref(), positions)
                .await;
            resp.assert_status(200);
            let page = resp.page_items();
            assert!(
                page.len() <= limit as usize,
                "GET {path} returned {} items for limit {limit}",
                page.len()
            );
            items.extend(page);
            match resp.next_cursor() {
                Some(next) => cursor = Some(next),
                None => return items,
            }
        }
        panic!("GET {path} never ended: over 10,000 pages");
    }

    /// Every item of a list endpoint, in pages of 100.
    pub(crate) async fn collect_pages(&self, path: &str, positions: &[String]) -> Vec<Value> {
        self.collect_pages_with(path, MAX_LIMIT, positions).await
    }

    /// Blocks until the read models reached every position in `positions` (within
    /// [`WAIT_DEADLINE`]). Retries only while the query API answers 503 `stale_read`.
    pub(crate) async fn wait_for(&self, positions: &[String]) {
        self.wait_for_within(positions, WAIT_DEADLINE).await;
    }

    /// [`TestApp::wait_for`] with an explicit deadline.
    pub(crate) async fn wait_for_within(&self, positions: &[String], deadline: Duration) {
        let started = Instant::now();
        for chunk in positions.chunks(POSITIONS_PER_REQUEST) {
            loop {
                let request = self.query("/v1/feed").query(&[("limit", "1")]);
                let resp = self.send(with_positions(request, chunk)).await;
                if resp.status == StatusCode::OK {
                    break;
                }
                assert!(
                    resp.status == StatusCode::SERVICE_UNAVAILABLE
                        && resp.code() == Some("stale_read"),
                    "waiting for positions: expected 200 or 503 stale_read, got {resp}"
                );
                assert!(
                    started.elapsed() < deadline,
                    "the read models did not reach {} positions within {}s (service logs: {})",
                    positions.len(),
                    deadline.as_secs(),
                    self.log_dir.display()
                );
                // The server already waited CHRONICLE_CONSISTENCY_WAIT_MS; just do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // ----- tokens -------------------------------------------------------------------------

    /// The claims of a token the command API issued.
    pub(crate) fn token_claims(token: &str) -> Value {
        let payload = token.split('.').nth(1).expect("a JWT has three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("the JWT payload is base64url");
        serde_json::from_slice(&bytes).expect("the JWT payload is JSON")
    }

    /// An HS256 token with `claims`, signed with `secret`.
    pub(crate) fn sign_token(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("failed to sign a test token")
    }

    // ----- Postgres -----------------------------------------------------------------------

    /// A connection to the test database.
    pub(crate) async fn db(&self) -> tokio_postgres::Client {
        connect_postgres(&self.database_url).await
    }

    fn drop_database(&self) {
        let admin_url = self.env.admin_database_url.clone();
        let database = self.database.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = chronicle_infra::db::PgConfig::parse(&admin_url)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .await
                    .ok()
            })
        });
        let _ = worker.join();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill_projector();
        for slot in [&self.command_api, &self.query_api] {
            if let Ok(mut slot) = slot.lock()
                && let Some(mut process) = slot.take()
            {
                process.kill();
            }
        }
        // Keep the database of a failed test for inspection; the logs stay in any case.
        if !std::thread::panicking() {
            self.drop_database();
        }
    }
}

/// Adds one `min_position=` parameter per position.
pub(crate) fn with_positions(mut request: RequestBuilder, positions: &[String]) -> RequestBuilder {
    for position in positions {
        request = request.query(&[("min_position", position)]);
    }
    request
}

/// A registered user.
#[derive(Debug, Clone)]
pub(crate) struct TestUser {
    /// The user id.
    pub(crate) id: String,
    /// The normalised handle.
    pub(crate) handle: String,
    /// The bearer token registration issued.
    pub(crate) token: String,
    /// The position of the `UserRegistered` event.
    pub(crate) position: String,
}

/// A published post.
#[derive(Debug, Clone)]
pub(crate) struct TestPost {
    /// The post id.
    pub(crate) id: String,
    /// The author's user id.
    pub(crate) author: String,
    /// The position of the `PostPublished` event.
    pub(crate) position: String,
}

/// A whole HTTP answer: status, headers and the body as JSON (a JSON string holding the raw
/// text when the body is not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The response headers.
    pub(crate) headers: HeaderMap,
    /// The body.
    pub(crate) body: Value,
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.status, self.content_type(), self.body)
    }
}

impl Resp {
    async fn read(response: reqwest::Response) -> Resp {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("failed to read a {status} response body: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    /// The `Content-Type` header, or `""`.
    pub(crate) fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem document's `code`, if any.
    pub(crate) fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// Asserts the status code.
    #[track_caller]
    pub(crate) fn assert_status(&self, expected: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "expected status {expected}, got {self}"
        );
        self
    }

    /// Asserts an RFC 9457 problem document with this status and code.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: u16, code: &str) -> &Resp {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, Some(code)),
            "expected a {status} `{code}` problem, got {self}"
        );
        self.assert_problem_shape();
        self
    }

    /// Asserts the body is a well-formed problem document (any status and code).
    #[track_caller]
    pub(crate) fn assert_problem_shape(&self) -> &Resp {
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "expected Content-Type application/problem+json, got {self}"
        );
        for field in ["type", "title", "detail", "code"] {
            assert!(
                self.body.get(field).is_some_and(Value::is_string),
                "problem document without a string `{field}`: {self}"
            );
        }
        assert_eq!(
            self.body.get("status").and_then(Value::as_u64),
            Some(u64::from(self.status.as_u16())),
            "problem document's `status` differs from the HTTP status: {self}"
        );
        self
    }

    /// A string field of the body.
    #[track_caller]
    pub(crate) fn str_field(&self, name: &str) -> String {
        self.body
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string field `{name}` in {self}"))
            .to_owned()
    }

    /// An integer field of the body.
    #[track_caller]
    pub(crate) fn u64_field(&self, name: &str) -> u64 {
        self.body
            .get(name)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no integer field `{name}` in {self}"))
    }

    /// The `items` of a page.
    #[track_caller]
    pub(crate) fn page_items(&self) -> Vec<Value> {
        self.body
            .get("items")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("not a page (no `items` array): {self}"))
            .clone()
    }

    /// The `next_cursor` of a page (`None` when null).
    #[track_caller]
    pub(crate) fn next_cursor(&self) -> Option<String> {
        match self.body.get("next_cursor") {
            Some(Value::String(cursor)) => Some(cursor.clone()),
            Some(Value::Null) => None,
            _ => panic!("not a page (no `next_cursor` string or null): {self}"),
        }
    }
}

/// The `post_id`s of a page of posts, in order.
#[track_caller]
pub(crate) fn post_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            item.get("post_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("post without `post_id`: {item}"))
                .to_owned()
        })
        .collect()
}

/// The `user_id`s of a page of user summaries, in order.
#[track_caller]
pub(crate) fn user_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            item.get("user_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("user summary without `user_id`: {item}"))
                .to_owned()
        })
        .collect()
}

/// Asserts posts are newest first: `(published_at, post_id)` strictly descending.
#[track_caller]
pub(crate) fn assert_newest_first(items: &[Value], what: &str) {
    let keys: Vec<(String, String)> = items
        .iter()
        .map(|item| {
            let published_at = item
                .get("published_at")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{what}: post without `published_at`: {item}"));
            let instant = chrono::DateTime::parse_from_rfc3339(published_at)
                .unwrap_or_else(|e| {
                    panic!("{what}: published_at {published_at:?} is not RFC 3339: {e}")
                })
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let post_id = item
                .get("post_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{what}: post without `post_id`: {item}"));
            (instant, post_id.to_owned())
        })
        .collect();
    for pair in keys.windows(2) {
        assert!(
            pair[0] > pair[1],
            "{what}: not newest first: {:?} comes before {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_url_is_found_in_plain_and_coloured_lines() {
        assert_eq!(
            parse_listening_url(
                "2026-11-26T09:30:00Z  INFO command_api: listening on http://127.0.0.1:4242"
            ),
            Some("http://127.0.0.1:4242".to_owned())
        );
        assert_eq!(
            parse_listening_url(
                "\u{1b}[32m INFO\u{1b}[0m listening on http://127.0.0.1:51234 addr=x"
            ),
            Some("http://127.0.0.1:51234".to_owned())
        );
        assert_eq!(parse_listening_url("starting up"), None);
    }

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "db1"),
            "postgres://postgres@127.0.0.1:5432/db1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "db1"),
            "postgres://u:p@h/db1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "db1"),
            "postgres://h:5432/db1"
        );
    }
}
