//! Commands that leave state on the command side besides their event, finished in the
//! background when their request could not finish them.
//!
//! Two commands hold rows that must end up agreeing with the log: an erasure
//! ([`crate::erasure`]) and a registration, whose handle reservation and password only mean
//! something once UserRegistered is in the log. Each records what it is about to append before
//! it appends it. If the broker leaves the outcome unknown, or the process dies between the
//! record and the acknowledgement, the record stays pending, and [`finish`] appends the same
//! event again (the projector applies an event id once) and completes it. Nothing is ever left
//! half done: a handle reserved for a user the log never hears of, or an erasure begun and never
//! completed.

use std::time::Duration;

use chronicle_events::Envelope;
use chronicle_infra::Problem;
use deadpool_postgres::tokio_postgres::Row;
use uuid::Uuid;

use crate::AppState;
use crate::idempotency::Sent;

/// Most pending commands of one kind a round of [`finish`] takes on.
pub(crate) const FINISH_BATCH: i64 = 100;

/// Finishes the erasures and registrations left pending for longer than `after`, every
/// `every`, for as long as the process runs. A failure is logged and retried at the next tick.
pub(crate) async fn finish(app: AppState, after: Duration, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for (what, finished) in [
            ("erasures", app.finish_pending_erasures(after).await),
            (
                "registrations",
                app.finish_pending_registrations(after).await,
            ),
        ] {
            match finished {
                Ok(0) => {}
                Ok(finished) => tracing::info!(finished, "finished pending {what}"),
                Err(problem) => tracing::warn!(
                    code = problem.code(),
                    "failed to finish pending {what}; retrying at the next tick"
                ),
            }
        }
    }
}

impl AppState {
    /// The rows of `find` (a statement taking at most `$1` rows pending for longer than `$2`
    /// seconds, oldest first): up to [`FINISH_BATCH`] pending for longer than `after`.
    pub(crate) async fn oldest_pending(
        &self,
        find: &str,
        after: Duration,
    ) -> Result<Vec<Row>, Problem> {
        let client = self.pool.get().await?;
        let find = client.prepare_cached(find).await?;
        Ok(client
            .query(&find, &[&FINISH_BATCH, &after.as_secs_f64()])
            .await?)
    }

    /// Appends again the UserRegistered of up to [`FINISH_BATCH`] handle reservations pending
    /// for longer than `after`, and confirms each once the log has it; how many. Stops at the
    /// first that fails.
    ///
    /// A reservation is never given up here, even when the broker refuses the copy: an earlier
    /// copy may be in the log.
    async fn finish_pending_registrations(&self, after: Duration) -> Result<usize, Problem> {
        let pending = self
            .oldest_pending(
                "SELECT user_id, pending_envelope FROM command.handles
                 WHERE pending_envelope IS NOT NULL
                   AND reserved_at < now() - make_interval(secs => $2)
                 ORDER BY reserved_at LIMIT $1",
                after,
            )
            .await?;
        let mut finished = 0;
        for row in pending {
            let user: Uuid = row.get(0);
            let envelope =
                Envelope::from_json(row.get(1)).map_err(|err| Problem::internal(&err))?;
            let position = match self.append(&envelope).await {
                Sent::Appended(position) => position,
                Sent::Refused(problem) => return Err(problem),
                Sent::Unknown => {
                    return Err(Problem::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "outcome_unknown",
                        "the event log did not confirm UserRegistered",
                    ));
                }
            };
            self.confirm_registration(user).await?;
            metrics::counter!("command_registrations_finished_total").increment(1);
            tracing::info!(
                user.id = %user,
                partition = position.partition,
                offset = position.offset,
                "finished a pending registration"
            );
            finished += 1;
        }
        Ok(finished)
    }

    /// Marks `user`'s handle reservation confirmed: their UserRegistered is in the log.
    pub(crate) async fn confirm_registration(&self, user: Uuid) -> Result<(), Problem> {
        let client = self.pool.get().await?;
        let confirm = client
            .prepare_cached(
                "UPDATE command.handles SET pending_envelope = NULL
                 WHERE user_id = $1 AND pending_envelope IS NOT NULL",
            )
            .await?;
        client.execute(&confirm, &[&user]).await?;
        Ok(())
    }
}
