//! How each event changes the read models.
//!
//! Each event's change is idempotent on its own (rows are sets keyed by what they describe), and
//! a counter moves only when a row really changed. Events are applied set-based: [`apply`] cuts
//! a batch into steps of events that touch different rows and runs one statement per event type
//! and step. Counters of users live in `user_counters` and are moved
//! through [`CounterDeltas`]: collected over a batch, then written once, in user-id order, so that
//! batches of different partitions that touch the same users never deadlock.
//!
//! The SQL names tables as `{s}.<table>`: `{s}` is the schema of the generation being built.
//!
//! Two registrations of one handle: the command API reserves a handle before it appends
//! UserRegistered, so a handle has one registration in the log, but history written before it
//! kept the reservations of registrations whose outcome was unknown can hold two. Both become
//! users (nothing is parked: the read models do not make handles unique), each keeps its
//! handle in its profile, and a lookup by handle names the earliest registration: the lowest
//! `occurred_at` (`joined_at`), then the lowest `user_id`. That rule depends only on the events,
//! not on the order in which their partitions are applied, so every generation agrees.
//!
//! The parts: [`plan`] cuts a batch into steps, [`step`] holds each event type's SQL,
//! [`counters`] the counter changes a batch collects, [`notify`] the notifications and
//! [`search`] what search reads (both projection version 2; a generation of version 1 has
//! neither, see [`Layout`]).

mod counters;
mod erase;
mod notify;
mod plan;
mod search;
mod step;
mod stream;

use std::collections::BTreeMap;

use chronicle_events::Envelope;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};
use uuid::Uuid;

use crate::generation::{Layout, q};

pub(crate) use counters::CounterDeltas;
pub(crate) use erase::hold_lock as hold_erasure_lock;

/// Applies `events` (in log order) to the read models; counter changes go to `deltas`.
///
/// Instead of one statement per event, the events are cut into [`Step`]s: an event goes into the
/// first step after every earlier event it depends on (see [`Touches`]). Within a step no two
/// events touch the same row, so the order among them does not matter, and each step is applied
/// with one set-based statement per event type. A batch of 500 events usually needs a handful
/// of steps, so a batch costs a few dozen statements instead of 500.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    schema: &str,
    layout: Layout,
    events: &[&Envelope],
    deltas: &mut CounterDeltas,
) -> Result<(), Error> {
    for step in plan::plan(events) {
        step.apply(tx, schema, layout, deltas).await?;
    }
    Ok(())
}

/// Runs the generation-relative `sql` as a cached prepared statement.
pub(super) async fn execute(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), Error> {
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.execute(&statement, params).await?;
    Ok(())
}

/// Like [`execute`], returning the rows.
pub(super) async fn query(
    tx: &Transaction<'_>,
    schema: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.query(&statement, params).await
}

/// Runs `sql` with the `deltas` as `$1` (post ids, ascending) and `$2` (changes), those of 0
/// only when `with_zeros`.
pub(super) async fn write_post_deltas(
    tx: &Transaction<'_>,
    schema: &str,
    deltas: &BTreeMap<Uuid, i64>,
    with_zeros: bool,
    sql: &str,
) -> Result<(), Error> {
    let (posts, by): (Vec<Uuid>, Vec<i64>) = deltas
        .iter()
        .filter(|(_, by)| with_zeros || **by != 0)
        .map(|(post, by)| (*post, *by))
        .unzip();
    if posts.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(&q(schema, sql)).await?;
    tx.execute(&statement, &[&posts, &by]).await?;
    Ok(())
}
