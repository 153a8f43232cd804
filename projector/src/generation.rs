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
///
/// - 1: profiles, posts, likes, follows, replies and their counters.
/// - 2: adds notifications (`sql/notifications.sql`) and search (`sql/search.sql`).
/// - 3: adds what live streams push (`sql/streams.sql`).
/// - 4: adds the erased users (`sql/erasure.sql`).
pub const PROJECTION_VERSION: i32 = 4;

/// The oldest version a generation that holds read models can be brought to
/// [`PROJECTION_VERSION`] from in place: what later versions add starts empty (the stream holds
/// what happens from now on), so it needs no history. Older ones need `projector rebuild`.
const IN_PLACE_FROM: i32 = 2;

/// The tables a generation has, from the projection version that built it. A projector keeps
/// applying events to an older active generation in that generation's own layout, so the read
/// models it serves stay whole while `projector rebuild` fills a generation of the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Version 2 and later: `notifications` and `notification_reads`.
    pub(crate) notifications: bool,
    /// Version 2 and later: `post_search` and `user_search`.
    pub(crate) search: bool,
    /// Version 3 and later: `stream`.
    pub(crate) streams: bool,
    /// Version 4 and later: `erased_users`. Without it an erasure still removes what the
    /// user's rows hold, but events applied after it are not kept from bringing some back.
    pub(crate) erasure: bool,
}

impl Layout {
    /// The layout of a generation built by projection code `version`.
    pub(crate) fn of(version: i32) -> Layout {
        Layout {
            notifications: version >= 2,
            search: version >= 2,
            streams: version >= 3,
            erasure: version >= 4,
        }
    }

    /// The layout this code builds.
    pub(crate) fn current() -> Layout {
        Layout::of(PROJECTION_VERSION)
    }

    /// The layout of active generation `name`, built by projection code `version`, to which
    /// this code may apply events: not one built by newer code, whose layout it does not know.
    pub(crate) fn of_active(name: &str, version: i32) -> Result<Layout, String> {
        if version > PROJECTION_VERSION {
            return Err(format!(
                "the active generation {name} was built by projection code v{version}, newer \
                 than this projector's v{PROJECTION_VERSION}: upgrade this projector"
            ));
        }
        Ok(Layout::of(version))
    }
}

/// The DDL each projection version adds to the one before, `{schema}` standing for the
/// generation's schema.
const ADDED_BY_VERSION: &[(i32, &str)] = &[
    (1, include_str!("../sql/read_models.sql")),
    (2, include_str!("../sql/notifications.sql")),
    (2, include_str!("../sql/search.sql")),
    (3, include_str!("../sql/streams.sql")),
    (4, include_str!("../sql/erasure.sql")),
];

/// The DDL that takes a generation of version `from` (0: nothing yet) to [`PROJECTION_VERSION`].
fn ddl_after(from: i32, schema: &str) -> String {
    ADDED_BY_VERSION
        .iter()
        .filter(|(version, _)| *version > from)
        .map(|(_, sql)| q(schema, sql).replace("{schema}", schema))
        .collect::<Vec<_>>()
        .join("\n")
}

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

/// The active generation's name and the projection version that built it, held `FOR SHARE`
/// until the transaction ends, so that no switch of generations happens meanwhile. `None` while
/// a switch is committing.
pub(crate) async fn active_held(
    client: &impl GenericClient,
) -> Result<Option<(String, i32)>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT name, code_version FROM projection.generations
             WHERE state = 'active' FOR SHARE",
        )
        .await?;
    Ok(client
        .query_opt(&statement, &[])
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// Brings the active generation to this code's layout in place where that needs no history:
/// one that has never applied an event (a new database: migration 0005 made g1 in the layout of
/// version 1), or one of version [`IN_PLACE_FROM`] or later. One of an older version that holds
/// read models stays as it is, and reaches the new layout through `projector rebuild`.
///
/// It looks before it locks: a batch of a projector that died mid-transaction may hold the
/// generation's row `FOR SHARE` until PostgreSQL notices, and a start-up must not wait for that
/// when there is nothing to do.
pub(crate) async fn upgrade_in_place(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let active = "SELECT name, code_version FROM projection.generations WHERE state = 'active'";
    let Some(row) = client.query_opt(active, &[]).await? else {
        return Ok(());
    };
    let (name, version): (String, i32) = (row.get(0), row.get(1));
    if version >= PROJECTION_VERSION {
        return Ok(());
    }
    let schema = schema_of(&name);
    let used = format!(
        "SELECT EXISTS (SELECT 1 FROM {schema}.applied_events)
             OR EXISTS (SELECT 1 FROM projection.offsets WHERE generation = $1 AND next_offset > 0)"
    );
    let needs_empty = version < IN_PLACE_FROM;
    if needs_empty && client.query_one(&used, &[&name]).await?.get(0) {
        tracing::warn!(
            generation = %name,
            built_by = version,
            current = PROJECTION_VERSION,
            "the active generation was built by older projection code; it keeps serving in its \
             own layout until `projector rebuild` builds one of the current version"
        );
        return Ok(());
    }
    let tx = client.transaction().await?;
    // Should the generation's row be held by a batch that does not end, this start fails (and
    // the next one tries again) rather than hang.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'").await?;
    let row = tx
        .query_opt(&format!("{active} AND name = $1 FOR UPDATE"), &[&name])
        .await
        .context("cannot lock the active generation to bring it up to date")?;
    // Switched, upgraded or (one that had to be empty) written to meanwhile by another process:
    // nothing to do here.
    if row.is_none_or(|row| row.get::<_, i32>(1) != version)
        || (needs_empty && tx.query_one(&used, &[&name]).await?.get(0))
    {
        return Ok(());
    }
    tx.batch_execute(&ddl_after(version, &schema))
        .await
        .with_context(|| format!("failed to bring generation {name} up to date"))?;
    tx.execute(
        "UPDATE projection.generations SET code_version = $2 WHERE name = $1",
        &[&name, &PROJECTION_VERSION],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        generation = %name,
        from = version,
        to = PROJECTION_VERSION,
        "brought the active generation up to date in place"
    );
    Ok(())
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
        ddl_after(0, &schema)
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
    let version: i32 = client
        .query_one(
            "SELECT code_version FROM projection.generations WHERE name = $1",
            &[&name],
        )
        .await?
        .get(0);
    let schema = schema_of(&name);
    let tables = crate::verify::tables(Layout::of(version))
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
