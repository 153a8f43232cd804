//! [`TestApp`]: one isolated Chronicle (database, topic, group, processes), built, started,
//! faulted and torn down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// How to build a [`TestApp`].
#[derive(Debug, Clone)]
pub(crate) struct TestAppBuilder {
    pub(super) partitions: u32,
    pub(super) consistency_wait_ms: u64,
    pub(super) projectors: usize,
    /// Service settings on top of the harness's own.
    pub(super) env: Vec<(String, String)>,
    /// The Postgres server to create the test database on, instead of the harness's.
    pub(super) admin_database_url: Option<String>,
    /// The broker to use instead of the harness's.
    pub(super) kafka_brokers: Option<String>,
    /// Replicas of each partition of the test topic.
    pub(super) replication_factor: u32,
    /// A history written by an earlier release, loaded before the services start.
    pub(super) history: Option<&'static str>,
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

    /// Loads the history of `tests/fixtures/<name>/` (its database and log, written by an
    /// earlier release) into the test's database and topic before the services start; the
    /// topic needs the fixture's partitions.
    pub(crate) fn history(mut self, name: &'static str) -> Self {
        self.history = Some(name);
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
    /// The key pair the command API signs tokens with.
    pub(crate) token_key: TokenKey,
    /// Base URL of the command API.
    pub(crate) command_url: String,
    /// Base URL of the query API.
    pub(crate) query_url: String,
    /// HTTP client for tests.
    pub(crate) client: reqwest::Client,
    pub(super) env: HarnessEnv,
    pub(super) launcher: Launcher,
    pub(super) log_dir: PathBuf,
    pub(super) command_api: Mutex<Option<ServiceProcess>>,
    pub(super) query_api: Mutex<Option<ServiceProcess>>,
    pub(super) projectors: Mutex<Vec<ServiceProcess>>,
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
            history: None,
        }
    }

    /// A Chronicle with the default settings.
    pub(crate) async fn spawn() -> TestApp {
        TestApp::builder().spawn().await
    }

    pub(super) async fn start(builder: TestAppBuilder) -> TestApp {
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
        let database = format!("chronicle_t_{}_{id}", test_run());
        let topic = format!("t_{id}.events");
        let group = format!("t_{id}.projector");

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

        if let Some(name) = builder.history {
            fixture::load_history(name, &database_url, &env.kafka_brokers, &topic).await;
        }

        let log_dir = env.log_root.join(&database);
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        // Beside the logs, not among them: tests read every log file for secrets.
        let key_dir = env.log_root.join(format!("{database}.keys"));
        std::fs::create_dir_all(&key_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", key_dir.display()));
        let token_key = TokenKey::generate(&key_dir, "token-key", &mut Rng::from_entropy());

        let service_env: Vec<(String, String)> = [
            ("KAFKA_BROKERS", env.kafka_brokers.clone()),
            ("CHRONICLE_TOPIC", topic.clone()),
            ("CHRONICLE_PARTITIONS", builder.partitions.to_string()),
            (
                "CHRONICLE_REPLICATION_FACTOR",
                builder.replication_factor.to_string(),
            ),
            ("DATABASE_URL", database_url.clone()),
            (
                "CHRONICLE_TOKEN_SIGNING_KEY_FILE",
                token_key.private_file.display().to_string(),
            ),
            (
                "CHRONICLE_TOKEN_VERIFY_KEY_FILES",
                token_key.public_file.display().to_string(),
            ),
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
            token_key,
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

    /// Where this test's token keys are written (outside [`TestApp::log_dir`]).
    pub(crate) fn key_dir(&self) -> &Path {
        self.token_key
            .private_file
            .parent()
            .expect("a key file is in a directory")
    }

    /// Starts one more projector process in the test's consumer group.
    pub(crate) async fn start_projector(&self) {
        self.start_projector_with(&[]).await;
    }

    /// Kills (SIGKILL) every projector process; how many of them were still running (not
    /// already exited by themselves).
    pub(crate) fn kill_projector(&self) -> usize {
        let mut projectors = self.projectors.lock().expect("projectors lock");
        let mut running = 0;
        for mut projector in projectors.drain(..) {
            if matches!(projector.child.try_wait(), Ok(None)) {
                running += 1;
            }
            projector.kill();
        }
        running
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
        kill_api(&self.command_api);
    }

    /// Starts the command API again, on the address it had (after [`TestApp::kill_command_api`]).
    pub(crate) async fn start_command_api(&self) {
        self.start_command_api_with(&[]).await;
    }

    /// [`TestApp::start_command_api`] with `extra` variables set or replaced.
    pub(crate) async fn start_command_api_with(&self, extra: &[(&str, &str)]) {
        let process = self
            .restart_api(
                "command-api",
                "CHRONICLE_COMMAND_ADDR",
                &self.command_url,
                extra,
            )
            .await;
        *self.command_api.lock().expect("command-api lock") = Some(process);
    }

    /// Kills (SIGKILL) the query API.
    pub(crate) fn kill_query_api(&self) {
        kill_api(&self.query_api);
    }

    /// Starts the query API again, on the address it had (after [`TestApp::kill_query_api`]).
    pub(crate) async fn start_query_api(&self) {
        let process = self
            .restart_api("query-api", "CHRONICLE_QUERY_ADDR", &self.query_url, &[])
            .await;
        *self.query_api.lock().expect("query-api lock") = Some(process);
    }

    /// Starts `binary` on the address of `url` (named by `address_variable`), with `extra`
    /// variables set or replaced.
    async fn restart_api(
        &self,
        binary: &'static str,
        address_variable: &str,
        url: &str,
        extra: &[(&str, &str)],
    ) -> ServiceProcess {
        let launcher = self.launcher.clone();
        let address = url.trim_start_matches("http://").to_owned();
        let mut extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        extra.push((address_variable.to_owned(), address));
        tokio::task::spawn_blocking(move || {
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            launcher.start_with(binary, &extra)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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

impl TestApp {
    /// Starts one more projector in the test's consumer group with `extra` environment
    /// variables on top of the test's (e.g. another `DATABASE_URL`).
    pub(crate) async fn start_projector_with(&self, extra: &[(&str, &str)]) {
        let launcher = self.launcher.clone();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let projector = tokio::task::spawn_blocking(move || {
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            launcher.start_with("projector", &extra)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.projectors
            .lock()
            .expect("projectors lock")
            .push(projector);
    }

    /// Sends SIGTERM to the `index`th running projector (in start order) and waits up to
    /// `within` for it to exit: its exit status and how long it took, or `None` if it was still
    /// running then (it is then killed).
    pub(crate) async fn terminate_projector_at(
        &self,
        index: usize,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let projector = {
            let mut projectors = self.projectors.lock().expect("projectors lock");
            assert!(
                index < projectors.len(),
                "there are only {} projectors",
                projectors.len()
            );
            projectors.remove(index)
        };
        terminate(projector, within).await
    }

    /// Sends the query API SIGTERM and waits up to `within` for it to exit: its status and how
    /// long it took, or `None` (it is then killed).
    pub(crate) async fn terminate_query_api(
        &self,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let process = self
            .query_api
            .lock()
            .expect("query-api lock")
            .take()
            .expect("the query API runs");
        terminate(process, within).await
    }
}

/// Sends `process` SIGTERM and waits up to `within` for it to exit: its status and how long it
/// took, or `None` (it is then killed).
async fn terminate(
    mut process: ServiceProcess,
    within: Duration,
) -> Option<(std::process::ExitStatus, Duration)> {
    tokio::task::spawn_blocking(move || {
        let sent = Command::new("kill")
            .args(["-TERM", &process.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -TERM {} failed", process.name);
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = process.child.try_wait().expect("cannot wait for it") {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        process.kill();
        None
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Kills (SIGKILL) the API process in `slot`, if one runs.
fn kill_api(slot: &Mutex<Option<ServiceProcess>>) {
    if let Some(mut process) = slot.lock().expect("service lock").take() {
        process.kill();
    }
}
