//! `projector verify`: are two generations the same read models?
//!
//! Per table: the row count and an order-independent checksum (the sum of a 64-bit hash of every
//! row), then, for the first table that differs, the first rows found in one and not the other.
//! Counter rows that are all zero are left out: whether a counter that went up and down again
//! has a row depends on how events happened to be batched, not on what they mean.

use std::fmt;

use deadpool_postgres::GenericClient;

use crate::generation::{Layout, schema_of};

/// A read-model table, with what is compared of it: its columns, and which rows.
type Table = (&'static str, &'static str, &'static str);

/// The read-model tables of a generation of `layout`.
pub(crate) fn tables(layout: Layout) -> impl Iterator<Item = &'static Table> {
    let notifications: &[Table] = if layout.notifications {
        NOTIFICATION_TABLES
    } else {
        &[]
    };
    let search: &[Table] = if layout.search { SEARCH_TABLES } else { &[] };
    let erasure: &[Table] = if layout.erasure { ERASURE_TABLES } else { &[] };
    TABLES
        .iter()
        .chain(notifications)
        .chain(search)
        .chain(erasure)
}

/// The erasure table of projection version 4.
const ERASURE_TABLES: &[Table] = &[("erased_users", "user_id, erased_at", "true")];

/// The search tables of projection version 2.
const SEARCH_TABLES: &[Table] = &[
    ("post_search", "post_id, published_at, document", "true"),
    ("user_search", "user_id, handle, display_name", "true"),
];

/// The notification tables of projection version 2.
const NOTIFICATION_TABLES: &[Table] = &[
    (
        "notifications",
        "notification_id, recipient_id, kind, actor_id, post_id, created_at",
        "true",
    ),
    ("notification_reads", "user_id, up_to", "true"),
];

/// The tables every generation has.
const TABLES: &[Table] = &[
    (
        "users",
        "user_id, handle, display_name, bio, joined_at",
        "true",
    ),
    (
        "user_counters",
        "user_id, post_count, follower_count, following_count, likes_received, likes_given",
        "(post_count, follower_count, following_count, likes_received, likes_given) <> (0, 0, 0, 0, 0)",
    ),
    (
        "posts",
        "post_id, author_id, body, published_at, like_count, deleted_at, reply_to",
        "true",
    ),
    ("post_counters", "post_id, reply_count", "reply_count <> 0"),
    ("likes", "post_id, user_id, liked_at", "true"),
    ("follows", "follower_id, followee_id, followed_at", "true"),
    ("applied_events", "event_id", "true"),
];

/// One table's fingerprint in one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    /// The table.
    pub table: &'static str,
    /// Its rows (as compared).
    pub rows: i64,
    /// The sum of the rows' hashes, as text.
    pub checksum: String,
}

/// The outcome of comparing two generations.
#[derive(Debug)]
pub struct Comparison {
    /// The two generations.
    pub names: (String, String),
    /// Each table's fingerprint in both.
    pub tables: Vec<(TableSum, TableSum)>,
    /// For the first table that differs: rows only in the first, rows only in the second.
    pub first_difference: Option<(&'static str, Vec<String>, Vec<String>)>,
}

impl Comparison {
    /// Whether the two generations hold the same read models.
    pub fn identical(&self) -> bool {
        self.tables.iter().all(|(a, b)| a == b)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = &self.names;
        writeln!(f, "{:<16} {:>10} {:>10}  checksums", "table", a, b)?;
        for (x, y) in &self.tables {
            let verdict = if x == y { "equal" } else { "DIFFERENT" };
            writeln!(
                f,
                "{:<16} {:>10} {:>10}  {verdict}",
                x.table, x.rows, y.rows
            )?;
        }
        if let Some((table, only_a, only_b)) = &self.first_difference {
            writeln!(f, "first rows that differ in {table}:")?;
            for row in only_a {
                writeln!(f, "  only in {a}: {row}")?;
            }
            for row in only_b {
                writeln!(f, "  only in {b}: {row}")?;
            }
        } else if self.identical() {
            writeln!(f, "{a} and {b} hold the same read models")?;
        }
        Ok(())
    }
}

/// Compares generations `a` and `b` (as `client` sees them; the caller makes sure they are at
/// the same offsets there, and that what it sees does not move: one snapshot). Symmetric:
/// `(b, a)` finds the same differences, sides swapped. The tables compared are those both
/// generations have.
pub async fn compare(
    client: &impl GenericClient,
    a: &str,
    b: &str,
) -> Result<Comparison, tokio_postgres::Error> {
    let version: Option<i32> = client
        .query_one(
            "SELECT min(code_version) FROM projection.generations WHERE name IN ($1, $2)",
            &[&a, &b],
        )
        .await?
        .get(0);
    let specs: Vec<&Table> = tables(Layout::of(version.unwrap_or(1))).collect();
    let mut tables = Vec::with_capacity(specs.len());
    for (table, columns, filter) in &specs {
        let x = checksum(client, &schema_of(a), table, columns, filter).await?;
        let y = checksum(client, &schema_of(b), table, columns, filter).await?;
        tables.push((x, y));
    }
    let mut first_difference = None;
    if let Some((table, columns, filter)) = specs
        .iter()
        .zip(&tables)
        .find(|(_, (x, y))| x != y)
        .map(|(spec, _)| spec)
    {
        let only = |from: &str, other: &str| {
            format!(
                "SELECT ROW({columns})::text FROM (
                     SELECT {columns} FROM {} WHERE {filter}
                     EXCEPT ALL
                     SELECT {columns} FROM {} WHERE {filter}
                 ) d LIMIT 5",
                qualified(from, table),
                qualified(other, table)
            )
        };
        let rows = |sql: String| async move {
            client.query(&sql, &[]).await.map(|rows| {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
        };
        first_difference = Some((*table, rows(only(a, b)).await?, rows(only(b, a)).await?));
    }
    Ok(Comparison {
        names: (a.to_owned(), b.to_owned()),
        tables,
        first_difference,
    })
}

fn qualified(generation: &str, table: &str) -> String {
    format!("{}.{table}", schema_of(generation))
}

async fn checksum(
    client: &impl GenericClient,
    schema: &str,
    table: &'static str,
    columns: &str,
    filter: &str,
) -> Result<TableSum, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(
                     ('x' || left(md5(ROW({columns})::text), 16))::bit(64)::bigint::numeric
                 ), 0)::text
                 FROM {schema}.{table} WHERE {filter}"
            ),
            &[],
        )
        .await?;
    Ok(TableSum {
        table,
        rows: row.get(0),
        checksum: row.get(1),
    })
}

/// In how many partitions of `topic` generations `a` and `b` are at different offsets (a
/// partition without a row is at offset 0). Each side is filtered before the join, so a
/// partition known to only one of them counts: `(a, b)` and `(b, a)` always agree.
pub(crate) async fn differing_partitions(
    client: &impl GenericClient,
    topic: &str,
    a: &str,
    b: &str,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM
                 (SELECT partition, next_offset FROM projection.offsets
                  WHERE generation = $1 AND topic = $3) x
             FULL JOIN
                 (SELECT partition, next_offset FROM projection.offsets
                  WHERE generation = $2 AND topic = $3) y
                 ON y.partition = x.partition
             WHERE coalesce(x.next_offset, 0) <> coalesce(y.next_offset, 0)",
            &[&a, &b, &topic],
        )
        .await?
        .get(0))
}

/// `projector verify a b`: compares two generations, which must be at the same offsets. The
/// offsets and the tables are read in one snapshot (a read-only `REPEATABLE READ`
/// transaction), so nothing is frozen: the live projector goes on meanwhile. Returns whether
/// they are identical.
pub async fn verify_generations(
    pool: &deadpool_postgres::Pool,
    topic: &str,
    a: &str,
    b: &str,
) -> anyhow::Result<bool> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let found = tx
        .query(
            "SELECT name FROM projection.generations WHERE name = ANY($1)",
            &[&vec![a, b]],
        )
        .await?
        .len();
    anyhow::ensure!(
        found == 2 || (a == b && found == 1),
        "no such generation: give two of `projector generations list`"
    );
    let differing = differing_partitions(&tx, topic, a, b).await?;
    anyhow::ensure!(
        differing == 0,
        "{a} and {b} are at different offsets in {differing} partitions; generations are compared \
         only at the same offsets (a rebuild compares them just before it switches)"
    );
    let comparison = compare(&tx, a, b).await?;
    print!("{comparison}");
    tx.rollback().await?;
    Ok(comparison.identical())
}
