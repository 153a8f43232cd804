//! Generations of the read models.
//!
//! Each generation is a complete set of read-model tables in its own schema (`read_<name>`), with
//! its own stored offsets. Exactly one generation is `active`: the live projector applies new
//! events to it and the APIs read from it. `projector rebuild` fills a `building` generation from
//! offset 0 while the active one keeps serving, then activates it in one transaction; the old one
//! is `retired` and stays until `projector generations drop`.
//!
//! The live projector reads the active generation with `FOR SHARE` at the start of every batch;
//! the switch updates that row, so it waits for batches in flight and holds back new ones until
//! it commits. No batch is ever applied to a generation that is no longer active.

use anyhow::{Context, bail};
use deadpool_postgres::{GenericClient, Pool};

/// The version of the projection code: what events make of the read models. Bump it when that
/// changes; `rebuild` verifies a new generation against the active one only when both were
/// built by the same version.
pub const PROJECTION_VERSION: i32 = 1;

/// The schema of generation `name`.
pub fn schema_of(name: &str) -> String {
    chronicle_infra::progress::read_schema(name)
}

/// `template` with `{s}` replaced by the schema's name.
pub(crate) fn q(schema: &str, template: &str) -> String {
    template.replace("{s}", schema)
}

/// Which generation a projector applies events to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Whichever is active when a batch starts (the live projector).
    Active,
    /// This one (a rebuild).
    Building(String),
}

/// One generation, as `generations list` shows it.
#[derive(Debug)]
pub struct Generation {
    /// `g1`, `g2`, ...
    pub name: String,
    /// `building`, `active` or `retired`.
    pub state: String,
    /// The projection code version that built it.
    pub code_version: i32,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Every generation, oldest first.
pub async fn list(client: &impl GenericClient) -> anyhow::Result<Vec<Generation>> {
    let rows = client
        .query(
            "SELECT name, state, code_version, created_at FROM projection.generations
             ORDER BY substr(name, 2)::int",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Generation {
            name: row.get(0),
            state: row.get(1),
            code_version: row.get(2),
            created_at: row.get(3),
        })
        .collect())
}

/// The active generation's name.
pub async fn active(client: &impl GenericClient) -> anyhow::Result<String> {
    client
        .query_opt(
            "SELECT name FROM projection.generations WHERE state = 'active'",
            &[],
        )
        .await?
        .map(|row| row.get(0))
        .context("there is no active generation")
}

/// The active generation's name, held `FOR SHARE` until the transaction ends, so that no switch
/// of generations happens meanwhile. `None` while a switch is committing.
pub(crate) async fn active_held(
    client: &impl GenericClient,
) -> Result<Option<String>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached("SELECT name FROM projection.generations WHERE state = 'active' FOR SHARE")
        .await?;
    Ok(client
        .query_opt(&statement, &[])
        .await?
        .map(|row| row.get(0)))
}

/// Creates a new, empty `building` generation and its schema; returns its name.
pub(crate) async fn create(pool: &Pool) -> anyhow::Result<String> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let name: String = tx
        .query_one(
            "SELECT 'g' || (coalesce(max(substr(name, 2)::int), 0) + 1)
             FROM projection.generations",
            &[],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO projection.generations (name, state, code_version) VALUES ($1, 'building', $2)",
        &[&name, &PROJECTION_VERSION],
    )
    .await?;
    let schema = schema_of(&name);
    tx.batch_execute(&format!(
        "CREATE SCHEMA {schema};\n{}",
        q(&schema, include_str!("../sql/read_models.sql")).replace("{schema}", &schema)
    ))
    .await
    .with_context(|| format!("failed to create the tables of generation {name}"))?;
    tx.commit().await?;
    Ok(name)
}

/// Drops a retired or abandoned generation: its schema, offsets and dead letters.
pub async fn drop(pool: &Pool, name: &str) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let state: Option<String> = tx
        .query_opt(
            "SELECT state FROM projection.generations WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
        .map(|row| row.get(0));
    match state.as_deref() {
        None => bail!("there is no generation {name}"),
        Some("active") => bail!("generation {name} is active; rebuild another one first"),
        Some("building") if rebuild_running(&tx).await? => {
            bail!("generation {name} is being built by a running rebuild")
        }
        Some(_) => {}
    }
    tx.batch_execute(&format!("DROP SCHEMA {} CASCADE", schema_of(name)))
        .await?;
    tx.execute(
        "DELETE FROM projection.generations WHERE name = $1",
        &[&name],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Updates the planner's statistics of `target`'s read-model tables.
pub(crate) async fn analyze(pool: &Pool, target: &Target) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let name = match target {
        Target::Building(name) => name.clone(),
        Target::Active => active(&client).await?,
    };
    let schema = schema_of(&name);
    let tables = crate::verify::TABLES
        .iter()
        .map(|(table, _, _)| format!("{schema}.{table}"))
        .collect::<Vec<_>>()
        .join(", ");
    client.batch_execute(&format!("ANALYZE {tables}")).await?;
    tracing::debug!(generation = %name, "analyzed");
    Ok(())
}

/// The advisory lock a rebuild holds for as long as it runs.
pub(crate) const REBUILD_LOCK: &str = "chronicle.rebuild";

async fn rebuild_running(client: &impl GenericClient) -> anyhow::Result<bool> {
    // Taking the lock and letting it go at once tells whether someone else holds it.
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext($1))",
            &[&REBUILD_LOCK],
        )
        .await?
        .get(0);
    Ok(!free)
}
