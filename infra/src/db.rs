//! Postgres: connection settings (TLS included), the connection pool and the migration runner.
//!
//! Every connection Chronicle makes to PostgreSQL, pooled or not, comes from a [`PgConfig`], so
//! that all of them honour `DATABASE_URL`'s `sslmode` and `sslrootcert` as libpq would (see
//! [`SslMode`]).
//!
//! Each service owns one schema and migrates it at start-up. Migrations run under a session-level
//! advisory lock named after the schema, so several processes starting at once apply each
//! migration exactly once; each migration runs in its own transaction with its bookkeeping row.

mod tls;
mod url;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use tls::PgTls;
pub use tls::{PgTlsStream, RootCerts, SslMode, TlsError};
pub use url::SyntaxError;

/// Database settings shared by the services. `Debug` shows the URL without its password.
#[derive(Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `DATABASE_URL`: the Postgres connection string, a URL or libpq's `keyword=value` pairs.
    /// Besides what tokio-postgres reads, libpq's `sslmode` (`disable`, `prefer` (default),
    /// `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CA certificates;
    /// without it the system's CA store).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chronicle",
        hide_env_values = true
    )]
    pub url: String,
    /// `CHRONICLE_DB_POOL_SIZE`: connections in the pool (default 16).
    #[arg(
        long = "db-pool-size",
        env = "CHRONICLE_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("url", &url::redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl DatabaseArgs {
    /// The parsed connection settings, with a 5 s connect timeout unless the URL sets one.
    pub fn pg_config(&self) -> anyhow::Result<PgConfig> {
        let mut config = PgConfig::parse(&self.url).context("DATABASE_URL is not usable")?;
        if config.config.get_connect_timeout().is_none() {
            config.config.connect_timeout(Duration::from_secs(5));
        }
        Ok(config)
    }

    /// A pool of connections. Connections are made lazily, so this succeeds while the database
    /// is down; requests then answer 503 until it is back.
    pub fn pool(&self) -> anyhow::Result<Pool> {
        build_pool(self.pg_config()?, self.pool_size)
    }

    /// A pool whose sessions cannot write (`default_transaction_read_only`), for services
    /// that must never write.
    pub fn read_only_pool(&self) -> anyhow::Result<Pool> {
        build_pool(self.pg_config()?.read_only(), self.pool_size)
    }
}

/// How to connect to PostgreSQL: tokio-postgres's settings and the TLS that `sslmode` asks for.
/// Cheap to clone; `Debug` shows no password.
#[derive(Clone)]
pub struct PgConfig {
    config: tokio_postgres::Config,
    tls: PgTls,
    ssl_mode: SslMode,
    root_certs: Option<RootCerts>,
}

/// Why a connection string is unusable. Never quotes the string: it holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    /// It does not scan as a URL or as `keyword=value` pairs.
    #[error("not a PostgreSQL connection string: {0}")]
    Syntax(SyntaxError),
    /// tokio-postgres refuses a parameter (its error's source says which).
    #[error(transparent)]
    Parameter(#[from] tokio_postgres::Error),
    /// The TLS settings cannot be honoured.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl PgConfig {
    /// Parses a connection string (a URL or `keyword=value` pairs), libpq's `sslmode` and
    /// `sslrootcert` included, and loads the CA certificates these ask for.
    pub fn parse(url: &str) -> Result<PgConfig, PgConfigError> {
        let split = url::split(url).map_err(PgConfigError::Syntax)?;
        let mut config: tokio_postgres::Config = split.rest.parse()?;
        let (ssl_mode, root_certs) =
            tls::settings(split.sslmode.as_deref(), split.sslrootcert.as_deref())?;
        // libpq ignores sslmode on Unix sockets, where PostgreSQL speaks no TLS; tokio-postgres
        // would refuse `require` there.
        let only_sockets = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)));
        config.ssl_mode(if only_sockets {
            tokio_postgres::config::SslMode::Disable
        } else {
            ssl_mode.negotiation()
        });
        let tls = tls::connector(ssl_mode, root_certs.as_ref())?;
        Ok(PgConfig {
            config,
            tls,
            ssl_mode,
            root_certs,
        })
    }

    /// tokio-postgres's part of the settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// These settings for sessions that cannot write (`default_transaction_read_only`).
    pub fn read_only(mut self) -> PgConfig {
        self.config.options("-c default_transaction_read_only=on");
        self
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Opens one connection outside any pool (a `LISTEN` session, a session-level lock). The
    /// connection half must be spawned or polled for the client to work.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, PgTlsStream>,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's own `Debug` leaves the password out.
        f.debug_struct("PgConfig")
            .field("config", &self.config)
            .field("sslmode", &self.ssl_mode.as_str())
            .field(
                "sslrootcert",
                &self.root_certs.as_ref().map(|roots| match roots {
                    RootCerts::System => Path::new("system"),
                    RootCerts::File(path) => path.as_path(),
                }),
            )
            .finish()
    }
}

/// The settings error behind a failed connection, if it is one a retry will not mend: the
/// server's certificate refused (or TLS otherwise failing), or the server refusing the
/// credentials or the connection (SQLSTATE class 28: a wrong password, no `pg_hba.conf` entry).
pub fn configuration_error(err: &tokio_postgres::Error) -> Option<String> {
    if let Some(tls) = tls::rustls_error(err) {
        return Some(format!("TLS with the database failed: {tls}"));
    }
    // tokio-postgres's own message is a bare "db error": the server's says what it refused.
    let refusal = err.as_db_error()?;
    refusal
        .code()
        .code()
        .starts_with("28")
        .then(|| format!("the database refused the connection: {refusal}"))
}

/// `err` and its causes, for a log line: tokio-postgres names only the kind of failure ("error
/// connecting to server") and leaves the why to its sources.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn build_pool(config: PgConfig, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config.config,
        config.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("failed to build the database pool")
}

/// One schema change, applied once, in order of `version`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Position in the sequence, starting at 1.
    pub version: i32,
    /// A short name, recorded with the version.
    pub name: &'static str,
    /// The SQL, run as one transaction.
    pub sql: &'static str,
}

/// Brings `schema` up to date with `migrations`, waiting for the database to be reachable for
/// up to `patience`; a refused certificate or password fails at once ([`configuration_error`]).
pub async fn migrate(
    pool: &Pool,
    schema: &str,
    migrations: &[Migration],
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut client = loop {
        let err = match pool.get().await {
            Ok(client) => break client,
            Err(err) => err,
        };
        // A refused certificate or password does not mend by waiting: say so at once.
        if let deadpool_postgres::PoolError::Backend(backend) = &err
            && let Some(reason) = configuration_error(backend)
        {
            return Err(err).context(reason);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(err).context("failed to connect to the database to migrate");
        }
        tracing::warn!(error = %error_chain(&err), "database not reachable yet, retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lock_key = format!("chronicle.migrate.{schema}");
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_key])
        .await
        .context("failed to take the migration lock")?;
    let result = apply_pending(&mut client, schema, migrations).await;
    // Unlock even when a migration failed; the session ends with the connection anyway.
    let unlock = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key])
        .await;
    result?;
    unlock.context("failed to release the migration lock")?;
    Ok(())
}

async fn apply_pending(
    client: &mut deadpool_postgres::Client,
    schema: &str,
    migrations: &[Migration],
) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .with_context(|| format!("failed to prepare schema `{schema}`"))?;
    let applied: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await.with_context(|| {
            format!(
                "migration {schema} {} ({}) failed",
                migration.version, migration.name
            )
        })?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            schema,
            version = migration.version,
            name = migration.name,
            "migrated"
        );
    }
    Ok(())
}

/// Whether a failed statement might succeed if retried as is, without any change to what it was
/// given: the connection broke or could not be made, the server is shutting down, out of
/// resources or read-only (a failover), the statement ran into a timeout or a lock it could not
/// take, or the transaction was chosen as a deadlock or serialisation victim.
///
/// What is not transient is not necessarily the statement's fault either (a missing table, a
/// refused privilege); callers decide what to do with those (the projector parks an event only
/// for a data exception or an integrity violation, see `projector/src/batch.rs`).
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        None => std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>()),
        Some(code) => is_transient_state(code),
    }
}

/// The SQLSTATEs (see the PostgreSQL manual's appendix A) of [`is_transient`].
fn is_transient_state(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    let class = &code.code()[..2];
    // 08: connection exception; 53: insufficient resources (disk full, out of memory, too many
    // connections, a configuration limit).
    matches!(class, "08" | "53")
        || [
            // The transaction was a deadlock or serialisation victim (also of recovery
            // conflicts on a standby), or its commit's outcome is unknown.
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
            // Operator intervention: statement_timeout or a cancel, the server shutting down,
            // restarting or not accepting connections yet, a session timed out.
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::IDLE_SESSION_TIMEOUT,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            // lock_timeout, or NOWAIT on a row someone holds.
            SqlState::LOCK_NOT_AVAILABLE,
            // The server's own system or I/O errors.
            SqlState::SYSTEM_ERROR,
            SqlState::IO_ERROR,
            // A write reached a read-only server: a failover to a replica under way.
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::SNAPSHOT_TOO_OLD,
        ]
        .contains(code)
}

/// Publishes `pool`'s usage as gauges every second, for `/metrics`: connections in use and
/// idle, the largest size, and how many callers wait for a connection (`pool` names it).
pub fn report_pool_usage(pool: &Pool, name: &'static str) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let status = pool.status();
            let idle = status.available;
            let in_use = status.size.saturating_sub(idle);
            metrics::gauge!("db_pool_connections", "pool" => name, "state" => "in_use")
                .set(in_use as f64);
            metrics::gauge!("db_pool_connections", "pool" => name, "state" => "idle")
                .set(idle as f64);
            metrics::gauge!("db_pool_max_size", "pool" => name).set(status.max_size as f64);
            metrics::gauge!("db_pool_waiting", "pool" => name).set(status.waiting as f64);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pa55-w0rd-never-shown";

    fn args(url: &str) -> DatabaseArgs {
        DatabaseArgs {
            url: url.to_owned(),
            pool_size: 4,
        }
    }

    #[test]
    fn sqlstates_are_transient_when_a_retry_as_is_may_succeed() {
        use tokio_postgres::error::SqlState;
        let table: &[(&str, bool)] = &[
            // Connection exceptions, shutdowns, restarts, session timeouts.
            ("08000", true),
            ("08006", true),
            ("08001", true),
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("57P05", true),
            ("25P03", true),
            // Victims of concurrency.
            ("40001", true),
            ("40P01", true),
            ("40003", true),
            // Timeouts and locks.
            ("57014", true),
            ("55P03", true),
            // Insufficient resources: disk full, out of memory, too many connections.
            ("53000", true),
            ("53100", true),
            ("53200", true),
            ("53300", true),
            ("53400", true),
            // The server's own failures; a failover to a read-only replica.
            ("58000", true),
            ("58030", true),
            ("25006", true),
            ("72000", true),
            // The statement's data: data exceptions, integrity violations, program limits.
            ("22001", false),
            ("22003", false),
            ("22021", false),
            ("22P02", false),
            ("23505", false),
            ("23503", false),
            ("23502", false),
            ("23514", false),
            ("54000", false),
            // Neither (a retry as is cannot help): missing objects, privileges, a dropped
            // database, a deferred constraint at commit, an internal error.
            ("42P01", false),
            ("42501", false),
            ("57P04", false),
            ("40002", false),
            ("XX000", false),
            ("58P01", false),
        ];
        for (code, transient) in table {
            assert_eq!(
                is_transient_state(&SqlState::from_code(code)),
                *transient,
                "SQLSTATE {code}"
            );
        }
    }

    #[test]
    fn no_password_appears_in_debug_output_or_errors() {
        let urls = [
            format!("postgres://chronicle:{PASSWORD}@db.example:5432/app?sslmode=require"),
            format!("postgres://chronicle@db.example/app?password={PASSWORD}&sslmode=prefer"),
            format!("host=db.example user=chronicle password='{PASSWORD}' sslmode=disable"),
            // Broken in various ways: the errors must not quote the string either.
            format!("postgres://chronicle:{PASSWORD}@db.example/app?sslmode=sometimes"),
            format!(
                "postgres://chronicle:{PASSWORD}@db.example/app?sslrootcert=/no/such.pem&sslmode=verify-full"
            ),
            format!("postgres://chronicle:{PASSWORD}@db.example:port/app"),
            format!("postgres://chronicle:{PASSWORD}@db.example/app?sslcert=/client.pem"),
            format!("host=db.example password={PASSWORD} more"),
            format!("host=db.example password='{PASSWORD}"),
        ];
        for url in &urls {
            let args = args(url);
            let debug = format!("{args:?}");
            assert!(!debug.contains(PASSWORD), "{debug}");
            match args.pg_config() {
                Ok(config) => {
                    let debug = format!("{config:?}");
                    assert!(!debug.contains(PASSWORD), "{debug}");
                }
                Err(err) => {
                    let message = format!("{err:#} / {err:?}");
                    assert!(!message.contains(PASSWORD), "{message}");
                }
            }
        }
        assert_eq!(
            format!("{:?}", args(&urls[0])),
            "DatabaseArgs { url: \"postgres://chronicle:[redacted]@db.example:5432/app?sslmode=require\", pool_size: 4 }"
        );
    }

    #[test]
    fn sslmode_reaches_tokio_postgres_as_the_negotiation_it_needs() {
        use tokio_postgres::config::SslMode as Negotiation;
        for (url, mode, negotiation) in [
            ("postgres://db/app", SslMode::Prefer, Negotiation::Prefer),
            (
                "postgres://db/app?sslmode=disable",
                SslMode::Disable,
                Negotiation::Disable,
            ),
            (
                "postgres://db/app?sslmode=require",
                SslMode::Require,
                Negotiation::Require,
            ),
            (
                "host=db sslmode=verify-full",
                SslMode::VerifyFull,
                Negotiation::Require,
            ),
            // A Unix socket carries no TLS; libpq ignores sslmode there.
            (
                "host=/run/postgresql sslmode=require",
                SslMode::Require,
                Negotiation::Disable,
            ),
        ] {
            let config = PgConfig::parse(url).expect(url);
            assert_eq!(config.ssl_mode(), mode, "{url}");
            assert_eq!(config.config().get_ssl_mode(), negotiation, "{url}");
        }
    }

    #[test]
    fn unsupported_tls_parameters_are_refused_by_name() {
        let err = PgConfig::parse("postgres://db/app?sslmode=allow").expect_err("allow");
        assert!(
            err.to_string()
                .starts_with("sslmode=allow is not supported"),
            "{err}"
        );
        let err = PgConfig::parse("postgres://db/app?sslcert=/client.pem").expect_err("sslcert");
        let message = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            message,
            "invalid connection string: unknown option `sslcert`"
        );
    }
}
