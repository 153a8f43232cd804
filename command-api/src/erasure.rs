//! Erasure, the command side: a user's data key, sessions, password, handle reservation and
//! idempotency rows go, and UserErased tells the read models to forget them. Destroying the
//! key is what makes their personal fields unreadable wherever the log was copied
//! (crypto-shredding).
//!
//! Three steps, each safe to repeat:
//!
//! 1. [`AppState::begin_erasure`]: a row in `command.erasures`; from then on no data key is
//!    made for the user ([`crate::keys::DataKeys::of`]).
//! 2. UserErased is appended. The projector applies it once, however often it is appended.
//! 3. [`AppState::complete_erasure`], once UserErased is in the log: the user's rows go, and
//!    the erasure is marked complete.
//!
//! A request runs all three. If it stops after the first (a broker outage, a crash),
//! [`crate::pending::finish`] runs the other two again in the background, so that every erasure
//! asked for ends complete.

use std::time::Duration;

use chronicle_events::{Envelope, Event, UserErased};
use chronicle_infra::{Position, Problem};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::AppState;
use crate::idempotency::{CommandError, IdempotencyKey, Sent};

/// Takes the erasure gate of user `$1` exclusively, until the transaction ends: the lock an
/// erasure holds while it records itself, and [`GATE_SHARED`] waits for.
const GATE: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('chronicle.erasure:' || $1::uuid::text, 0))";

/// Takes the erasure gate of user `$1` shared, until the transaction ends: the lock under which
/// a data key is made, so that making one and beginning an erasure never overlap.
pub(crate) const GATE_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(\
     hashtextextended('chronicle.erasure:' || $1::uuid::text, 0))";

impl AppState {
    /// Erases `user`: records the erasure, then appends UserErased and completes it in a task of
    /// its own, which neither the request timeout nor a client that goes away can cut short.
    /// Waits for that task until the key's answer deadline, then answers `outcome_unknown` (the
    /// erasure is recorded, and [`crate::pending::finish`] completes it if the task does not).
    ///
    /// The answers keep the contract of every command: `broker_unavailable` only when nothing
    /// will ever come of this request (its record is withdrawn), `outcome_unknown` with the
    /// `Idempotency-Key` to retry with otherwise. An erasure needs no stored answer to be safe
    /// to retry: a second UserErased changes nothing.
    pub(crate) async fn erase(
        &self,
        user: Uuid,
        key: &IdempotencyKey,
    ) -> Result<Position, CommandError> {
        let unknown = || CommandError::OutcomeUnknown {
            key: key
                .key
                .clone()
                .unwrap_or_else(|| Uuid::now_v7().to_string()),
        };
        let fresh = self.begin_erasure(user).await?;
        let (answer, answered) = oneshot::channel();
        let app = self.clone();
        tokio::spawn(async move {
            let sent = app.append_erasure(user, "request").await;
            if let Err(Failed::Refused(_)) = &sent
                && fresh
                && let Err(problem) = app.withdraw_erasure(user).await
            {
                tracing::warn!(user.id = %user, code = problem.code(), "the log refused UserErased and the erasure could not be withdrawn; it is finished in the background");
            }
            // A handler that stopped waiting needs no answer: it answered `outcome_unknown`.
            let _ = answer.send(sent);
        });
        match tokio::time::timeout_at(key.answer_by(), answered).await {
            Ok(Ok(Ok(position))) => Ok(position),
            Ok(Ok(Err(Failed::Refused(problem)))) if fresh => Err(problem.into()),
            Ok(Ok(Err(Failed::Problem(problem)))) => Err(problem.into()),
            Ok(Ok(Err(_))) => Err(unknown()),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("command_answer_deadline_total").increment(1);
                tracing::warn!(user.id = %user, "erasure not finished before the answer's deadline; outcome unknown");
                Err(unknown())
            }
        }
    }

    /// Records that `user` asked to be erased; whether this call made the record (a repeat of
    /// a pending erasure finds it there).
    ///
    /// Under the exclusive erasure gate: a data key made concurrently, under the shared gate,
    /// either committed before this row (and [`AppState::complete_erasure`] deletes it) or sees
    /// the row and is refused.
    async fn begin_erasure(&self, user: Uuid) -> Result<bool, Problem> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction.execute(GATE, &[&user]).await?;
        let made = transaction
            .execute(
                "INSERT INTO command.erasures (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&user],
            )
            .await?;
        transaction.commit().await?;
        Ok(made == 1)
    }

    /// Withdraws the record of `user`'s erasure, which this request made and the log refused:
    /// nothing comes of it. One completed meanwhile (by a concurrent request) stays.
    async fn withdraw_erasure(&self, user: Uuid) -> Result<(), Problem> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM command.erasures WHERE user_id = $1 AND completed_at IS NULL",
                &[&user],
            )
            .await?;
        Ok(())
    }

    /// Appends UserErased for `user` and, once it is in the log, completes the erasure; the
    /// position of the event. `by` (`request`, `finisher`) names who finished it, in metrics.
    async fn append_erasure(&self, user: Uuid, by: &'static str) -> Result<Position, Failed> {
        let envelope = Envelope::new(user, Event::UserErased(UserErased { user_id: user }));
        match self.append(&envelope).await {
            Sent::Appended(position) => {
                self.complete_erasure(user).await.map_err(|problem| {
                    tracing::warn!(user.id = %user, code = problem.code(), "UserErased appended, but the erasure is not complete yet; it is finished in the background");
                    Failed::Problem(problem)
                })?;
                metrics::counter!("command_erasures_total", "by" => by).increment(1);
                Ok(position)
            }
            Sent::Refused(problem) => Err(Failed::Refused(problem)),
            Sent::Unknown => Err(Failed::Unknown),
        }
    }

    /// Deletes what the command API holds of `user` (data key, sessions, password, handle
    /// reservation, idempotency rows, their registration's among them) and marks the erasure
    /// complete, in one transaction; then forgets the key this instance remembers.
    ///
    /// Only once UserErased is in the log: an erasure marked complete is never finished again.
    async fn complete_erasure(&self, user: Uuid) -> Result<(), Problem> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        for delete in [
            "DELETE FROM command.data_keys WHERE user_id = $1",
            "DELETE FROM command.sessions WHERE user_id = $1",
            "DELETE FROM command.credentials WHERE user_id = $1",
            "DELETE FROM command.handles WHERE user_id = $1",
            "DELETE FROM command.idempotency_keys WHERE scope = $1",
            // The registration's row is scoped to the client's address (the nil UUID before
            // that), and its fingerprint holds the handle, name and bio in the clear
            // (`handlers::register`): found by its event's aggregate, the new user.
            "DELETE FROM command.idempotency_keys
             WHERE starts_with(fingerprint, 'register' || chr(10))
               AND convert_from(envelope, 'UTF8')::jsonb ->> 'aggregate_id' = $1::uuid::text",
            // The record is there, unless a refused request withdrew it while this one was
            // appending: made again, so that the projector knows why the key is gone.
            "INSERT INTO command.erasures AS e (user_id, completed_at) VALUES ($1, now())
             ON CONFLICT (user_id) DO UPDATE SET completed_at = coalesce(e.completed_at, now())",
        ] {
            transaction.execute(delete, &[&user]).await?;
        }
        transaction.commit().await?;
        self.keys.forget(user);
        Ok(())
    }

    /// Finishes up to [`crate::pending::FINISH_BATCH`] erasures left pending for longer than `after` (longer
    /// than a request that began one can still be running); how many. Stops at the first that
    /// fails.
    pub(crate) async fn finish_pending_erasures(&self, after: Duration) -> Result<usize, Problem> {
        let pending = self
            .oldest_pending(
                "SELECT user_id FROM command.erasures
                 WHERE completed_at IS NULL
                   AND requested_at < now() - make_interval(secs => $2)
                 ORDER BY requested_at LIMIT $1",
                after,
            )
            .await?;
        let mut finished = 0;
        for row in pending {
            let user: Uuid = row.get(0);
            let position = self
                .append_erasure(user, "finisher")
                .await
                .map_err(Failed::into_problem)?;
            tracing::info!(
                user.id = %user,
                partition = position.partition,
                offset = position.offset,
                "finished a pending erasure"
            );
            finished += 1;
        }
        Ok(finished)
    }
}

/// Why appending and completing an erasure did not end in a completed erasure.
enum Failed {
    /// The log refused UserErased: it is not there.
    Refused(Problem),
    /// UserErased may or may not be in the log.
    Unknown,
    /// UserErased is in the log, but the rest failed (the database); a definite answer.
    Problem(Problem),
}

impl Failed {
    fn into_problem(self) -> Problem {
        match self {
            Failed::Refused(problem) | Failed::Problem(problem) => problem,
            Failed::Unknown => Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the event log did not confirm UserErased",
            ),
        }
    }
}
