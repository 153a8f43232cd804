//! Postgres: the connection pool and the migration runner.
//!
//! Each service owns one schema and migrates it at start-up. Migrations run under a session-level
//! advisory lock named after the schema, so several processes starting at once apply each
//! migration exactly once; each migration runs in its own transaction with its bookkeeping row.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Database settings shared by the services.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `DATABASE_URL`: the Postgres connection string.
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

impl DatabaseArgs {
    /// The parsed connection settings.
    pub fn pg_config(&self) -> anyhow::Result<tokio_postgres::Config> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .context("DATABASE_URL is not a valid Postgres connection string")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
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
        let mut config = self.pg_config()?;
        config.options("-c default_transaction_read_only=on");
        build_pool(config, self.pool_size)
    }
}

fn build_pool(config: tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
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
/// up to `patience`.
pub async fn migrate(
    pool: &Pool,
    schema: &str,
    migrations: &[Migration],
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut client = loop {
        match pool.get().await {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err).context("failed to connect to the database to migrate"),
        }
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

/// Whether a failed statement is worth retrying as is: the connection broke, the database is
/// restarting, or Postgres chose this transaction as a deadlock or serialisation victim.
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if err.is_closed() {
        return true;
    }
    match err.code() {
        None => std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>()),
        Some(code) => {
            *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
    }
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
