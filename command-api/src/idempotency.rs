//! `Idempotency-Key`: a retried command takes effect once and gets the first answer.
//!
//! The first attempt with a key stores the envelope it is about to append, then appends it, then
//! stores where it landed. A retry finds the row: with a position, it is answered from it; without
//! one (the first attempt's outcome was unknown, it was refused, or the process died between the
//! broker's acknowledgement and its answer), the stored envelope is appended again, unchanged.
//! The projector applies an event id once, so a second copy in the log changes nothing. Keys are
//! scoped to the acting user (registrations: to the client's address).
//!
//! A command sent without a key gets one from the server (a UUID), stored only when the answer
//! is 503 `outcome_unknown`: that answer carries the key, and retrying with it is safe.
//!
//! 503 `broker_unavailable` promises that no event comes of the request, so only a first attempt
//! can answer it. When the broker refuses a retry's copy, an earlier copy may still be in the
//! log: the retry answers `outcome_unknown` again, with the same key.
//!
//! The send and the recording of its result run in a task of their own, so that neither the
//! request timeout nor a client that goes away can cut them short between the broker's
//! acknowledgement and the row that remembers it. The handler waits for that task until
//! [`ANSWER_MARGIN`] before the request's deadline, then answers `outcome_unknown`.
//!
//! Keys live `CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS` (default 24): an older key is a new key, and
//! [`cleanup`] deletes expired rows in the background.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chronicle_events::Envelope;
use chronicle_infra::{Position, Problem};
use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use crate::AppState;

/// The `Idempotency-Key` header, if the request has one, and when the request must be answered.
#[derive(Debug, Clone)]
pub(crate) struct IdempotencyKey {
    /// The client's key, if it sent one.
    pub(crate) key: Option<String>,
    /// When the handler must have answered: [`ANSWER_MARGIN`] before the request timeout.
    answer_by: Instant,
}

impl IdempotencyKey {
    /// When the handler must have answered.
    pub(crate) fn answer_by(&self) -> Instant {
        self.answer_by
    }
}

/// When the request timeout ends a request, set by [`stamp_deadline`] before the timeout starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadline(pub(crate) Instant);

/// How long before the request's deadline a handler stops waiting for the broker and answers
/// `outcome_unknown`: time to store the key and write the answer.
pub(crate) const ANSWER_MARGIN: Duration = Duration::from_millis(500);

const HEADER: &str = "idempotency-key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<IdempotencyKey, Problem> {
        let answer_by = parts
            .extensions
            .get::<RequestDeadline>()
            .map_or_else(|| Instant::now() + Duration::from_secs(3600), |d| d.0)
            .checked_sub(ANSWER_MARGIN)
            .unwrap_or_else(Instant::now);
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(IdempotencyKey {
                key: None,
                answer_by,
            });
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
        Ok(IdempotencyKey {
            key: Some(key.to_owned()),
            answer_by,
        })
    }
}

/// Stamps each request with the moment the request timeout (`timeout`, applied inside this
/// layer) will end it.
pub(crate) async fn stamp_deadline(
    timeout: Duration,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request
        .extensions_mut()
        .insert(RequestDeadline(Instant::now() + timeout));
    next.run(request).await
}

/// What a command appended and where.
pub(crate) struct Appended {
    pub(crate) envelope: Envelope,
    pub(crate) position: Position,
}

/// A command that did not end in an acknowledged event.
#[derive(Debug)]
pub(crate) enum CommandError {
    /// A definite answer: nothing was changed (validation, 404, 409, `broker_unavailable`...).
    Problem(Problem),
    /// The event may or may not be in the log: 503 `outcome_unknown` with the key to retry with.
    OutcomeUnknown {
        /// The `Idempotency-Key` the command is stored under (the client's or the server's).
        key: String,
    },
}

impl From<Problem> for CommandError {
    fn from(problem: Problem) -> CommandError {
        CommandError::Problem(problem)
    }
}

impl IntoResponse for CommandError {
    fn into_response(self) -> Response {
        let key = match self {
            CommandError::Problem(problem) => return problem.into_response(),
            CommandError::OutcomeUnknown { key } => key,
        };
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let body = serde_json::json!({
            "type": "urn:chronicle:problem:outcome_unknown",
            "title": "The outcome is unknown",
            "status": status.as_u16(),
            "detail": "the event log did not confirm whether it took the command; retry it with \
                       the Idempotency-Key of this answer, which makes it take effect once",
            "code": "outcome_unknown",
            "idempotency_key": key,
        });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
        // Keys are printable ASCII (checked on the way in, or a UUID), so this cannot fail.
        if let Ok(value) = HeaderValue::from_str(&key) {
            headers.insert(HEADER, value);
        }
        response
    }
}

/// How one append ended, as the task that ran it tells the handler.
pub(crate) enum Sent {
    /// Acknowledged at this position.
    Appended(Position),
    /// Certainly not in the log: this answer, with nothing changed.
    Refused(Problem),
    /// Perhaps in the log.
    Unknown,
}

/// One command's append under a key.
#[derive(Clone)]
struct Attempt {
    scope: Uuid,
    key: String,
    fingerprint: String,
    envelope: Envelope,
    /// Whether its row exists already (the client sent the key, or this is a retry).
    stored: bool,
    /// Whether an earlier attempt sent this envelope, with an outcome this one cannot know: a
    /// refusal of this attempt then says nothing of that one.
    retry: bool,
}

/// What the key's row says.
enum Stored {
    Answered(Appended),
    Pending(Envelope),
}

impl AppState {
    /// Appends the event that `prepare` checks and builds, once per `(scope, key)`.
    ///
    /// `fingerprint` names the command and its arguments; reusing a key for a different command
    /// is refused. Without a key, the server assigns one, kept only if the outcome is unknown.
    pub(crate) async fn append_once(
        &self,
        scope: Uuid,
        key: &IdempotencyKey,
        fingerprint: &str,
        prepare: impl AsyncFnOnce() -> Result<Envelope, Problem>,
    ) -> Result<Appended, CommandError> {
        let attempt = |key: &str, envelope, stored, retry| Attempt {
            scope,
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            envelope,
            stored,
            retry,
        };
        let Some(client_key) = key.key.as_deref() else {
            let envelope = prepare().await?;
            let assigned = Uuid::now_v7().to_string();
            return self
                .send_attempt(attempt(&assigned, envelope, false, false), key.answer_by)
                .await;
        };
        match self.find(scope, client_key, fingerprint).await? {
            Some(Stored::Answered(appended)) => return Ok(appended),
            Some(Stored::Pending(envelope)) => {
                return self
                    .send_attempt(attempt(client_key, envelope, true, true), key.answer_by)
                    .await;
            }
            None => {}
        }
        let envelope = prepare().await?;
        if !self
            .store(scope, client_key, fingerprint, &envelope, None)
            .await?
        {
            // A concurrent attempt with the same key won; answer as its retry.
            return match self.find(scope, client_key, fingerprint).await? {
                Some(Stored::Answered(appended)) => Ok(appended),
                Some(Stored::Pending(envelope)) => {
                    self.send_attempt(attempt(client_key, envelope, true, true), key.answer_by)
                        .await
                }
                None => Err(Problem::internal(&"an idempotency key vanished").into()),
            };
        }
        self.send_attempt(attempt(client_key, envelope, true, false), key.answer_by)
            .await
    }

    /// Appends `attempt`'s envelope in a task of its own that records the outcome under its key
    /// whatever happens to this request, and waits for it until `answer_by`.
    async fn send_attempt(
        &self,
        attempt: Attempt,
        answer_by: Instant,
    ) -> Result<Appended, CommandError> {
        let (answer, answered) = oneshot::channel();
        let task = {
            let (app, attempt) = (self.clone(), attempt.clone());
            async move {
                let sent = app.append(&attempt.envelope).await;
                app.record(&attempt, &sent).await;
                if let Err(sent) = answer.send(sent) {
                    // The handler stopped waiting (and answered `outcome_unknown` with the key),
                    // or its request was dropped: the key's row must say what happened.
                    app.record_unanswered(&attempt, &sent).await;
                }
            }
        };
        tokio::spawn(task);
        let unknown = CommandError::OutcomeUnknown {
            key: attempt.key.clone(),
        };
        match tokio::time::timeout_at(answer_by, answered).await {
            Ok(Ok(Sent::Appended(position))) => {
                if attempt.stored {
                    tracing::info!(event.id = %attempt.envelope.event_id, "answered a command with an idempotency key");
                }
                Ok(Appended {
                    envelope: attempt.envelope,
                    position,
                })
            }
            // A retry's refusal proves only that this copy is not in the log: an earlier attempt
            // may have put one there, so its outcome is still unknown.
            Ok(Ok(Sent::Refused(_))) if attempt.retry => Err(unknown),
            Ok(Ok(Sent::Refused(problem))) => Err(problem.into()),
            // The task stored the key's row before answering.
            Ok(Ok(Sent::Unknown)) => Err(unknown),
            Ok(Err(_)) | Err(_) => {
                // The task died, or is still waiting for the broker: it records the outcome
                // when there is one; the row must exist before the client can retry with it.
                metrics::counter!("command_answer_deadline_total").increment(1);
                tracing::warn!(event.id = %attempt.envelope.event_id, "no acknowledgement before the answer's deadline; outcome unknown");
                if !attempt.stored
                    && let Err(problem) = self.store_attempt(&attempt, None).await
                {
                    tracing::error!(code = problem.code(), event.id = %attempt.envelope.event_id, "failed to store the key of a command whose outcome is unknown");
                }
                Err(unknown)
            }
        }
    }

    /// What the key's row must say once the send ended, while the handler still waits: the
    /// position of a stored key, or the envelope of a server-assigned key whose outcome is
    /// unknown (the handler is about to hand that key out).
    async fn record(&self, attempt: &Attempt, sent: &Sent) {
        let recorded = match (sent, attempt.stored) {
            (Sent::Appended(position), true) => {
                self.set_position(attempt.scope, &attempt.key, *position)
                    .await
            }
            (Sent::Unknown, false) => self.store_attempt(attempt, None).await.map(drop),
            _ => Ok(()),
        };
        if let Err(problem) = recorded {
            // The event may be in the log; a retry with the key appends it again, which the
            // projector ignores (it applies an event id once).
            tracing::error!(code = problem.code(), event.id = %attempt.envelope.event_id, "failed to record a command's outcome under its key");
        }
    }

    /// What the key's row must say when nobody waited for the send: the position, whichever of
    /// the handler and this task writes the row first.
    async fn record_unanswered(&self, attempt: &Attempt, sent: &Sent) {
        let Sent::Appended(position) = sent else {
            return;
        };
        if attempt.stored {
            return;
        }
        let recorded = self.store_attempt(attempt, Some(*position)).await;
        if let Err(problem) = recorded {
            tracing::error!(code = problem.code(), event.id = %attempt.envelope.event_id, "failed to record a command's outcome under its key");
        }
    }

    /// [`AppState::store`] of `attempt`'s key and envelope.
    async fn store_attempt(
        &self,
        attempt: &Attempt,
        position: Option<Position>,
    ) -> Result<bool, Problem> {
        self.store(
            attempt.scope,
            &attempt.key,
            &attempt.fingerprint,
            &attempt.envelope,
            position,
        )
        .await
    }

    /// The row of an unexpired key, if any; 422 if it was used for another command.
    async fn find(
        &self,
        scope: Uuid,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Stored>, Problem> {
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached(
                "SELECT fingerprint, envelope, partition, \"offset\"
                 FROM command.idempotency_keys
                 WHERE scope = $1 AND key = $2
                   AND created_at > now() - make_interval(secs => $3)",
            )
            .await?;
        let ttl = self.idempotency_ttl.as_secs_f64();
        let Some(row) = client.query_opt(&find, &[&scope, &key, &ttl]).await? else {
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
        Ok(Some(match stored {
            (Some(partition), Some(offset)) => {
                tracing::info!(event.id = %envelope.event_id, "answered a retried command from its idempotency key");
                Stored::Answered(Appended {
                    envelope,
                    position: Position { partition, offset },
                })
            }
            _ => Stored::Pending(envelope),
        }))
    }

    /// Stores `envelope` under the key (with its position, if known), unless an unexpired row
    /// holds the key; an expired one is replaced. A row without a position gets the one given.
    /// Whether the key is now this envelope's.
    async fn store(
        &self,
        scope: Uuid,
        key: &str,
        fingerprint: &str,
        envelope: &Envelope,
        position: Option<Position>,
    ) -> Result<bool, Problem> {
        let client = self.pool.get().await?;
        let store = client
            .prepare_cached(
                "INSERT INTO command.idempotency_keys
                     (scope, key, fingerprint, envelope, partition, \"offset\")
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (scope, key) DO UPDATE
                 SET fingerprint = excluded.fingerprint, envelope = excluded.envelope,
                     partition = excluded.partition, \"offset\" = excluded.\"offset\",
                     created_at = now()
                 WHERE idempotency_keys.created_at <= now() - make_interval(secs => $7)
                    OR (idempotency_keys.envelope = excluded.envelope
                        AND idempotency_keys.partition IS NULL
                        AND excluded.partition IS NOT NULL)",
            )
            .await?;
        let ttl = self.idempotency_ttl.as_secs_f64();
        let stored = client
            .execute(
                &store,
                &[
                    &scope,
                    &key,
                    &fingerprint,
                    &envelope.to_json(),
                    &position.map(|p| p.partition),
                    &position.map(|p| p.offset),
                    &ttl,
                ],
            )
            .await?;
        Ok(stored == 1)
    }

    async fn set_position(
        &self,
        scope: Uuid,
        key: &str,
        position: Position,
    ) -> Result<(), Problem> {
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

/// Deletes keys older than `ttl`, every `every`, for as long as the process runs.
pub(crate) async fn cleanup(pool: Pool, ttl: Duration, every: Duration) {
    let purge = crate::purge::Purge {
        sql: "DELETE FROM command.idempotency_keys WHERE (scope, key) IN (
                  SELECT scope, key FROM command.idempotency_keys
                  WHERE created_at <= now() - make_interval(secs => $1)
                  LIMIT $2)",
        what: "expired idempotency keys",
        age: ttl,
    };
    crate::purge::every(pool, every, purge).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chronicle_events::{Event, PostLiked};
    use chronicle_infra::kafka::EventProducer;
    use clap::Parser;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::{Config, Shared, auth};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_send_still_in_flight_at_the_deadline_is_outcome_unknown_and_still_lands() {
        // Arrange: a broker that takes 3 s to answer anything, and a command API state whose
        // database is nowhere (nothing here needs it to answer).
        let cluster = MockCluster::new(1).expect("mock cluster");
        let key = auth::tests::key_file();
        let config = Config::try_parse_from([
            "command-api",
            "--token-signing-key-file",
            key.to_str().expect("a UTF-8 path"),
            "--database-url",
            "postgres://nobody@127.0.0.1:9/nowhere",
            "--kafka-brokers",
            &cluster.bootstrap_servers(),
            "--topic",
            "unit.events",
        ])
        .expect("a configuration");
        std::fs::remove_file(&key).ok();
        cluster
            .create_topic(&config.kafka.topic, 1, 1)
            .expect("topic");
        let producer =
            EventProducer::new(&config.kafka, "/test", Duration::from_secs(10)).expect("producer");
        cluster
            .broker_round_trip_time(1, Duration::from_secs(3))
            .expect("slow broker");
        let pool = config.database.pool().expect("a lazy pool");
        let app = AppState(Arc::new(Shared {
            producer,
            lookups: crate::lookup::Lookups::start(&pool),
            tokens: auth::Tokens::new(
                &config.token_signing_key,
                &config.token_public_keys,
                None,
                Duration::from_secs(60),
                &pool,
            ),
            hasher: crate::password::Hasher::start(&config.password_hash)
                .await
                .expect("a hasher"),
            failures: crate::password::Failures::default(),
            keys: crate::keys::DataKeys::new(pool.clone()),
            pool,
            progress: chronicle_infra::progress::Progress::follow(
                config.database.pg_config().expect("a database config"),
                config.kafka.topic.clone(),
            ),
            per_user: None,
            consistency_wait: Duration::from_secs(1),
            idempotency_ttl: Duration::from_secs(60),
        }));
        let user = Uuid::now_v7();
        let envelope = Envelope::new(
            user,
            Event::PostLiked(PostLiked {
                post_id: user,
                user_id: user,
            }),
        );
        let attempt = Attempt {
            scope: user,
            key: "the-client-key".into(),
            fingerprint: "like".into(),
            envelope: envelope.clone(),
            stored: true,
            retry: false,
        };

        // Act: the handler may wait 300 ms.
        let started = Instant::now();
        let answer = app
            .send_attempt(attempt, started + Duration::from_millis(300))
            .await;

        // Assert: it answered in time, outcome unknown with the key...
        assert!(
            matches!(&answer, Err(CommandError::OutcomeUnknown { key }) if key == "the-client-key"),
            "{:?}",
            answer.err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // ...and the event it stopped waiting for is in the log after all: "unknown", not
        // "refused", was the honest answer.
        cluster
            .broker_round_trip_time(1, Duration::ZERO)
            .expect("a quick broker for the reader");
        let consumer: BaseConsumer = config
            .kafka
            .client_config()
            .set("group.id", "unit")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(&config.kafka.topic, 0, rdkafka::Offset::Beginning)
            .expect("partition");
        consumer.assign(&assignment).expect("assign");
        let landed = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                    return message.payload().and_then(|p| Envelope::from_json(p).ok());
                }
            }
            None
        })
        .await
        .expect("the consumer task");
        assert_eq!(landed, Some(envelope));
    }
}
