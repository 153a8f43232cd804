//! `Idempotency-Key`: a retried command takes effect once and gets the first answer.
//!
//! The first attempt with a key stores the envelope it is about to append, then appends it, then
//! stores where it landed. A retry finds the row: with a position, it is answered from it; without
//! one (the first attempt failed, or died between the broker's acknowledgement and its answer),
//! the stored envelope is appended again, unchanged. The projector applies an event id once, so a
//! second copy in the log changes nothing. Keys are scoped to the acting user.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chronicle_events::Envelope;
use chronicle_infra::{Position, Problem};
use uuid::Uuid;

use crate::AppState;

/// The `Idempotency-Key` header, if the request has one.
#[derive(Debug, Clone)]
pub(crate) struct IdempotencyKey(pub(crate) Option<String>);

const HEADER: &str = "idempotency-key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<IdempotencyKey, Problem> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| {
                (1..=64).contains(&key.len()) && key.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "validation_failed",
                    "Idempotency-Key must be 1 to 64 printable ASCII characters",
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// What a command appended and where.
pub(crate) struct Appended {
    pub(crate) envelope: Envelope,
    pub(crate) position: Position,
}

impl AppState {
    /// Appends the event that `prepare` checks and builds, once per `(scope, key)`.
    ///
    /// `fingerprint` names the command and its arguments; reusing a key for a different command
    /// is refused. Without a key, this is a plain append.
    pub(crate) async fn append_once(
        &self,
        scope: Uuid,
        key: &IdempotencyKey,
        fingerprint: &str,
        prepare: impl AsyncFnOnce() -> Result<Envelope, Problem>,
    ) -> Result<Appended, Problem> {
        let Some(key) = key.0.as_deref() else {
            let envelope = prepare().await?;
            let position = self.append(&envelope).await?;
            return Ok(Appended { envelope, position });
        };
        if let Some(appended) = self.replay(scope, key, fingerprint).await? {
            return Ok(appended);
        }
        let envelope = prepare().await?;
        let client = self.pool.get().await?;
        let claim = client
            .prepare_cached(
                "INSERT INTO command.idempotency_keys (scope, key, fingerprint, envelope)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (scope, key) DO NOTHING",
            )
            .await?;
        let claimed = client
            .execute(&claim, &[&scope, &key, &fingerprint, &envelope.to_json()])
            .await?;
        drop(client);
        if claimed == 0 {
            // A concurrent attempt with the same key won; answer as its retry.
            return self
                .replay(scope, key, fingerprint)
                .await?
                .ok_or_else(|| Problem::internal(&"an idempotency key vanished"));
        }
        let position = self.append(&envelope).await?;
        self.record(scope, key, position).await?;
        Ok(Appended { envelope, position })
    }

    /// The earlier attempt with this key, appended again if its answer was never recorded.
    async fn replay(
        &self,
        scope: Uuid,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Appended>, Problem> {
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached(
                "SELECT fingerprint, envelope, partition, \"offset\"
                 FROM command.idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .await?;
        let Some(row) = client.query_opt(&find, &[&scope, &key]).await? else {
            return Ok(None);
        };
        drop(client);
        if row.get::<_, &str>(0) != fingerprint {
            return Err(Problem::validation(
                "this Idempotency-Key was already used for a different request",
            ));
        }
        let envelope = Envelope::from_json(row.get(1)).map_err(|err| Problem::internal(&err))?;
        let stored: (Option<i32>, Option<i64>) = (row.get(2), row.get(3));
        let position = match stored {
            (Some(partition), Some(offset)) => Position { partition, offset },
            _ => {
                let position = self.append(&envelope).await?;
                self.record(scope, key, position).await?;
                position
            }
        };
        tracing::info!(event.id = %envelope.event_id, "answered a retried command from its idempotency key");
        Ok(Some(Appended { envelope, position }))
    }

    async fn record(&self, scope: Uuid, key: &str, position: Position) -> Result<(), Problem> {
        let client = self.pool.get().await?;
        let update = client
            .prepare_cached(
                "UPDATE command.idempotency_keys SET partition = $3, \"offset\" = $4
                 WHERE scope = $1 AND key = $2 AND partition IS NULL",
            )
            .await?;
        client
            .execute(
                &update,
                &[&scope, &key, &position.partition, &position.offset],
            )
            .await?;
        Ok(())
    }
}
