//! Where the harness finds the broker, PostgreSQL and the service binaries, and how it names
//! and reaches what it makes there.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Where the harness finds the broker, Postgres and the service binaries.
#[derive(Debug, Clone)]
pub(super) struct HarnessEnv {
    /// `KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub(super) kafka_brokers: String,
    /// `CHRONICLE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`.
    pub(super) admin_database_url: String,
    /// `CHRONICLE_BIN_DIR`, default the directory the test binary was built into.
    pub(super) bin_dir: PathBuf,
    /// `<target dir>/e2e-logs`.
    pub(super) log_root: PathBuf,
}

impl HarnessEnv {
    pub(super) fn from_env() -> HarnessEnv {
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

    pub(super) fn binary(&self, name: &str) -> PathBuf {
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

pub(super) fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The target directory this test binary was built in (`<target>/debug/deps/e2e-…` → `<target>`),
/// falling back to `<workspace>/target`.
pub(super) fn default_target_dir(workspace_root: &Path) -> PathBuf {
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
pub(super) fn default_bin_dir(target_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| target_dir.join("debug"))
}

/// `url` with its database name replaced by `database`.
pub(super) fn with_database(url: &str, database: &str) -> String {
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

/// The URL of a database on the server the tests make their databases on
/// (`CHRONICLE_TEST_DATABASE_URL`).
pub(crate) fn admin_database_url() -> String {
    HarnessEnv::from_env().admin_database_url
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
pub(super) fn redact(url: &str) -> String {
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

pub(super) fn check_broker_reachable(brokers: &str) {
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
pub(super) async fn create_topic(brokers: &str, topic: &str, partitions: u32, replicas: u32) {
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

/// The run these tests belong to, in their databases' names (`chronicle_t_<run>_<id>`), so
/// that a cleanup can tell runs apart: `CHRONICLE_TEST_RUN` (script/test sets it to
/// `<checkout>_<run>` and drops only the earlier runs of its own checkout), or else `adhoc_`
/// and the first characters of nextest's run id (of this process' id outside nextest).
pub(crate) fn test_run() -> String {
    if let Some(run) = non_empty_var("CHRONICLE_TEST_RUN") {
        assert!(
            run.len() <= 24
                && run
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "CHRONICLE_TEST_RUN={run:?}: at most 24 characters of [a-z0-9_]"
        );
        return run;
    }
    let run = non_empty_var("NEXTEST_RUN_ID")
        .map(|id| id.chars().filter(char::is_ascii_hexdigit).take(8).collect())
        .unwrap_or_else(|| format!("p{}", std::process::id()));
    format!("adhoc_{}", run.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn database_is_replaced_in_urls() {
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
