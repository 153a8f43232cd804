//! One handler per command: check who acts, validate, check what the command names exists,
//! append the event, answer with its position.

use axum::Json;
use std::net::IpAddr;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use chronicle_events::{
    Envelope, Event, NotificationsRead, PostDeleted, PostLiked, PostPublished, PostUnliked,
    ProfileUpdated, UserFollowed, UserRegistered, UserUnfollowed,
};
use chronicle_infra::client::ClientAddress;
use chronicle_infra::http::{
    JsonBody, Segment, min_positions, parse_id, query_pairs, wait_for_positions,
};
use chronicle_infra::kafka::ProduceError;
use chronicle_infra::{Position, Problem};

use crate::problems;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Actor;
use crate::idempotency::{Appended, CommandError, IdempotencyKey, Sent};
use crate::openapi::{IdempotencyHeader, MinPositions};
use crate::password::Password;
use crate::validate;
use chronicle_infra::problem::ProblemBody;

type Answer<T> = Result<(StatusCode, Json<T>), CommandError>;

/// A registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// Trimmed and lowercased, then 3–30 characters of `[a-z0-9_]`; unique.
    #[schema(example = "alice")]
    handle: String,
    /// 1–50 characters after trimming; no U+0000.
    #[schema(example = "Alice")]
    display_name: String,
    /// At most 160 characters after trimming; no U+0000.
    #[serde(default)]
    bio: Option<String>,
    /// 8–128 characters, any (never trimmed). Kept only as an argon2id hash, never in the event
    /// log.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128,
             example = "correct horse battery staple")]
    password: Password,
}

/// A new user, with a token for their commands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Registered {
    user_id: Uuid,
    handle: String,
    /// A bearer token (JWT) whose subject is the new user, for a new session.
    token: String,
    /// Where the UserRegistered event sits in the log (for `min_position`).
    position: String,
}

/// A profile change; give at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileRequest {
    /// 1–50 characters after trimming; no U+0000.
    #[serde(default)]
    display_name: Option<String>,
    /// At most 160 characters after trimming; no U+0000; empty clears it.
    #[serde(default)]
    bio: Option<String>,
}

/// A new post.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest {
    /// 1–1000 characters after trimming; no U+0000.
    #[schema(example = "Hello, Chronicle!")]
    body: String,
    /// The post this one replies to; it must exist (404 `post_not_found` otherwise).
    #[serde(default)]
    reply_to: Option<Uuid>,
}

/// A published post.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Published {
    post_id: Uuid,
    /// Where the PostPublished event sits in the log (for `min_position`).
    position: String,
}

/// An accepted command.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// Where the command's event sits in the log (for `min_position`).
    position: String,
}

impl AppState {
    /// Appends `envelope` to the log: acknowledged at a position, refused (503
    /// `broker_unavailable`: it is not in the log), or with an unknown outcome.
    ///
    /// An acknowledgement can come without an offset: when the idempotent producer retries a
    /// batch whose first acknowledgement was lost (a leader failover), the broker may answer
    /// DUPLICATE_SEQUENCE_NUMBER, and librdkafka reports the event delivered at offset -1001.
    /// The event is in the log, but a client could not wait for that position. Appending the
    /// same envelope again yields a real position after it in the same partition (same key),
    /// and the projector applies an event id once, so the second copy changes nothing.
    pub(crate) async fn append(&self, envelope: &Envelope) -> Sent {
        for _ in 0..3 {
            let position = match self.append_one(envelope).await {
                Sent::Appended(position) => position,
                other => return other,
            };
            if position.offset >= 0 {
                return Sent::Appended(position);
            }
            tracing::warn!(
                event.id = %envelope.event_id,
                partition = position.partition,
                "event acknowledged without its offset; appending it again for a position"
            );
        }
        // In the log, but not where: a retry with the key appends it again for a position.
        Sent::Unknown
    }

    /// One append of `envelope`, with whatever position the broker acknowledged.
    async fn append_one(&self, envelope: &Envelope) -> Sent {
        let started = std::time::Instant::now();
        let result = self.producer.send(envelope).await;
        metrics::histogram!("command_produce_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(position) => {
                tracing::info!(
                    event.id = %envelope.event_id,
                    event.kind = envelope.kind().name(),
                    partition = position.partition,
                    offset = position.offset,
                    "event appended"
                );
                Sent::Appended(position)
            }
            Err(ProduceError::Refused(err)) => {
                metrics::counter!("command_produce_errors_total", "outcome" => "refused")
                    .increment(1);
                tracing::warn!(event.id = %envelope.event_id, error = %err, "event refused");
                Sent::Refused(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "broker_unavailable",
                        "the event log refused the command; nothing was changed",
                    )
                    .with_retry_after(std::time::Duration::from_secs(1)),
                )
            }
            Err(ProduceError::Unknown(err)) => {
                metrics::counter!("command_produce_errors_total", "outcome" => "unknown")
                    .increment(1);
                tracing::warn!(event.id = %envelope.event_id, error = %err, "event perhaps appended");
                Sent::Unknown
            }
        }
    }

    /// Waits for the `min_position`s of the query, if any.
    async fn wait(&self, query: Option<String>) -> Result<(), Problem> {
        let positions = min_positions(&query_pairs(query.as_deref())?)?;
        wait_for_positions(&self.progress, &positions, self.consistency_wait).await
    }

    /// The author of a live (published, not deleted) post, from the read models.
    async fn post_author(&self, post_id: Uuid) -> Result<Uuid, Problem> {
        let schema = self.progress.require_read_schema()?;
        self.lookups
            .post_author(&schema, post_id)
            .await?
            .ok_or_else(problems::post_not_found)
    }

    /// Checks that a user is registered, from the read models.
    async fn user_exists(&self, user_id: Uuid) -> Result<(), Problem> {
        let schema = self.progress.require_read_schema()?;
        if self.lookups.user_exists(&schema, user_id).await? {
            Ok(())
        } else {
            Err(problems::user_not_found())
        }
    }
}

fn accepted(appended: Appended) -> (StatusCode, Json<Accepted>) {
    accepted_at(appended.position)
}

/// 202 with the position of the command's event.
pub(crate) fn accepted_at(position: Position) -> (StatusCode, Json<Accepted>) {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            position: position.encode(),
        }),
    )
}

/// `GET /readyz`: 200 when both the database and the broker answer.
pub(crate) async fn ready(State(app): State<AppState>) -> StatusCode {
    let database = async {
        match app.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    };
    let (database, broker) = tokio::join!(database, app.producer.is_ready());
    if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The scope of a registration's `Idempotency-Key`. Registrations have no user yet, and their
/// first answer carries a token: a key scoped to everyone would hand that token to anyone who
/// sends the same key with the same (public) handle, name and bio. Scoped to the client's
/// address instead, a retry from the client gets its answer and a replay from elsewhere is a
/// new registration (409 `handle_taken`).
fn address_scope(ip: IpAddr) -> Uuid {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Uuid::from_bytes(v6.octets())
}

/// `POST /v1/users`: hash the password, reserve the handle with it (atomically, in the
/// write-side tables), then append UserRegistered, and open a session. Without an
/// Idempotency-Key, a reservation whose event the broker refused is released; with one, or when
/// the outcome is unknown, it is kept for the retry, which appends the same event.
///
/// The password is not part of the key's fingerprint (which is stored): a retry with the key is
/// answered as the first attempt was, and the password is the first attempt's.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterRequest,
    params(IdempotencyHeader),
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 400, description = "Malformed body or `Idempotency-Key` (`invalid_body`, `validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The handle is taken (`handle_taken`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks its rule, or the `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable (`broker_unavailable`, `database_unavailable`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(app): State<AppState>,
    ClientAddress(client): ClientAddress,
    key: IdempotencyKey,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Answer<Registered> {
    let handle = validate::handle(&request.handle)?;
    let display_name = validate::display_name(&request.display_name)?;
    let bio = validate::bio(request.bio.as_deref().unwrap_or(""))?;
    let password = request.password;
    password.check_new("password")?;
    // An erasure finds the user's registration row by this prefix (`erasure`).
    let fingerprint = format!("register\n{handle}\n{display_name}\n{bio}");
    let user_id = Uuid::now_v7();
    let password_hash = app.hasher.hash(&password).await?;

    let scope = address_scope(client);
    let appended = app
        .append_once(scope, &key, &fingerprint, async || {
            let data_key = app.keys.of(user_id).await?;
            let mut event = Event::UserRegistered(UserRegistered {
                user_id,
                handle: handle.as_str().into(),
                display_name: display_name.into(),
                bio: bio.into(),
            });
            event.seal_personal(&data_key);
            let envelope = Envelope::new(user_id, event);
            // The reservation keeps the event until the log confirms it (`pending`).
            app.reserve_handle(&handle, &envelope, &password_hash)
                .await?;
            Ok(envelope)
        })
        .await;
    let appended = match appended {
        Ok(appended) => appended,
        Err(err) => {
            // Any other answer says the event is certainly not in the log (a refusal, the key's
            // row not stored), and frees the handle if this request reserved it. An event whose
            // outcome is unknown may be in the log: it keeps the handle, and is appended again,
            // by the client's retry with the key of the answer or in the background.
            if !matches!(err, CommandError::OutcomeUnknown { .. }) {
                app.release_handle(&handle, user_id, scope, key.key.as_deref())
                    .await;
            }
            return Err(err);
        }
    };
    let user_id = appended.envelope.actor;
    if let Err(problem) = app.confirm_registration(user_id).await {
        // UserRegistered is in the log; the background finisher appends it again (a copy the
        // projector ignores) and confirms the reservation.
        tracing::warn!(code = problem.code(), user.id = %user_id, "registered, but the handle reservation is not confirmed yet");
    }
    let session = app.open_session(user_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id,
            handle,
            token: session.token,
            position: appended.position.encode(),
        }),
    ))
}

impl AppState {
    /// Reserves `handle` for the user `registration` registers, with their password hash, or
    /// answers 409 `handle_taken`. The reservation is pending, holding `registration`, until
    /// [`AppState::confirm_registration`].
    async fn reserve_handle(
        &self,
        handle: &str,
        registration: &Envelope,
        password_hash: &str,
    ) -> Result<(), Problem> {
        let client = self.pool.get().await?;
        let reserve = client
            .prepare_cached(
                "WITH reserved AS (
                     INSERT INTO command.handles (handle, user_id, pending_envelope)
                     VALUES ($1, $2, $4)
                     ON CONFLICT (handle) DO NOTHING RETURNING user_id)
                 INSERT INTO command.credentials (user_id, password_hash)
                 SELECT user_id, $3 FROM reserved",
            )
            .await?;
        let reserved = client
            .execute(
                &reserve,
                &[
                    &handle,
                    &registration.actor,
                    &password_hash,
                    &registration.to_json(),
                ],
            )
            .await?;
        if reserved == 0 {
            return Err(problems::handle_taken(handle));
        }
        Ok(())
    }

    /// Gives up the pending reservation of `handle` for `user_id`, if there is one, whose event
    /// is certainly not in the log (its password hash goes with it), and the client's `key` for
    /// it, if any: a retry with that key starts afresh instead of sending an event whose handle
    /// is no longer held.
    ///
    /// Two requests with one key at once, the first refused while the second's copy is
    /// acknowledged, leave that user in the log without a reservation, as a user registered by
    /// another producer would be; the projector gives the handle to its earliest registration.
    async fn release_handle(&self, handle: &str, user_id: Uuid, scope: Uuid, key: Option<&str>) {
        let released = async {
            let mut client = self.pool.get().await?;
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "DELETE FROM command.handles
                     WHERE handle = $1 AND user_id = $2 AND pending_envelope IS NOT NULL",
                    &[&handle, &user_id],
                )
                .await?;
            if let Some(key) = key {
                transaction
                    .execute(
                        "DELETE FROM command.idempotency_keys
                         WHERE scope = $1 AND key = $2 AND partition IS NULL
                           AND convert_from(envelope, 'UTF8')::jsonb ->> 'aggregate_id'
                               = $3::uuid::text",
                        &[&scope, &key, &user_id],
                    )
                    .await?;
            }
            transaction.commit().await.map_err(Problem::from)
        };
        if let Err(problem) = released.await {
            tracing::error!(code = problem.code(), user.id = %user_id, "failed to release a handle reservation");
        }
    }
}

/// `PATCH /v1/users/me`: change display name and/or bio.
#[utoipa::path(patch, path = "/v1/users/me", tag = "users", request_body = ProfileRequest,
    params(IdempotencyHeader), security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed body or `Idempotency-Key` (`invalid_body`, `validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks its rule, or the `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable (`broker_unavailable`, `database_unavailable`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_profile(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    JsonBody(request): JsonBody<ProfileRequest>,
) -> Answer<Accepted> {
    if request.display_name.is_none() && request.bio.is_none() {
        return Err(Problem::validation("give display_name, bio or both to update").into());
    }
    let display_name = request
        .display_name
        .as_deref()
        .map(validate::display_name)
        .transpose()?;
    let bio = request.bio.as_deref().map(validate::bio).transpose()?;
    let fingerprint = format!("profile\n{display_name:?}\n{bio:?}");
    let mut event = Event::ProfileUpdated(ProfileUpdated {
        user_id: actor,
        display_name: display_name.map(Into::into),
        bio: bio.map(Into::into),
    });
    app.append_once(actor, &key, &fingerprint, async || {
        event.seal_personal(&app.keys.of(actor).await?);
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

/// `POST /v1/posts`: publish a post.
#[utoipa::path(post, path = "/v1/posts", tag = "posts", request_body = PublishRequest,
    params(MinPositions, IdempotencyHeader), security(("bearer" = [])),
    responses(
        (status = 202, description = "Published", body = Published),
        (status = 400, description = "Malformed body, `min_position` or `Idempotency-Key` (`invalid_body`, `validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such post to reply to (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks its rule, or the `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    RawQuery(query): RawQuery,
    JsonBody(request): JsonBody<PublishRequest>,
) -> Answer<Published> {
    let body = validate::post_body(&request.body)?;
    let reply_to = request.reply_to;
    // Checked always (a malformed one is a client's mistake), waited for only by a reply.
    let positions = min_positions(&query_pairs(query.as_deref())?)?;
    let fingerprint = format!("publish\n{reply_to:?}\n{body}");
    let appended = app
        .append_once(actor, &key, &fingerprint, async || {
            if let Some(parent) = reply_to {
                wait_for_positions(&app.progress, &positions, app.consistency_wait).await?;
                app.post_author(parent).await?;
            }
            let mut event = Event::PostPublished(PostPublished {
                post_id: Uuid::now_v7(),
                author_id: actor,
                body: body.into(),
                reply_to,
            });
            event.seal_personal(&app.keys.of(actor).await?);
            Ok(Envelope::new(actor, event))
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Published {
            post_id: appended.envelope.aggregate_id(),
            position: appended.position.encode(),
        }),
    ))
}

/// `DELETE /v1/posts/{post_id}`: only the author may delete a post.
#[utoipa::path(delete, path = "/v1/posts/{post_id}", tag = "posts",
    params(("post_id" = Uuid, Path, description = "The post"), MinPositions, IdempotencyHeader),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed path, `min_position` or `Idempotency-Key` (`validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not your post (`forbidden`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such post (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_post(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    Segment(post_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Accepted> {
    let post_id = parse_id("post_id", &post_id)?;
    let fingerprint = format!("delete\n{post_id}");
    app.append_once(actor, &key, &fingerprint, async || {
        app.wait(query).await?;
        if app.post_author(post_id).await? != actor {
            return Err(problems::not_the_author());
        }
        let event = Event::PostDeleted(PostDeleted {
            post_id,
            author_id: actor,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

/// `PUT /v1/posts/{post_id}/like`.
#[utoipa::path(put, path = "/v1/posts/{post_id}/like", tag = "posts",
    params(("post_id" = Uuid, Path, description = "The post"), MinPositions, IdempotencyHeader),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed path, `min_position` or `Idempotency-Key` (`validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such post (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn like(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    Segment(post_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Accepted> {
    let post_id = parse_id("post_id", &post_id)?;
    let fingerprint = format!("like\n{post_id}");
    app.append_once(actor, &key, &fingerprint, async || {
        app.wait(query).await?;
        app.post_author(post_id).await?;
        let event = Event::PostLiked(PostLiked {
            post_id,
            user_id: actor,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

/// `DELETE /v1/posts/{post_id}/like`.
#[utoipa::path(delete, path = "/v1/posts/{post_id}/like", tag = "posts",
    params(("post_id" = Uuid, Path, description = "The post"), MinPositions, IdempotencyHeader),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed path, `min_position` or `Idempotency-Key` (`validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such post (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn unlike(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    Segment(post_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Accepted> {
    let post_id = parse_id("post_id", &post_id)?;
    let fingerprint = format!("unlike\n{post_id}");
    app.append_once(actor, &key, &fingerprint, async || {
        app.wait(query).await?;
        app.post_author(post_id).await?;
        let event = Event::PostUnliked(PostUnliked {
            post_id,
            user_id: actor,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

fn not_self(actor: Uuid, user_id: Uuid) -> Result<(), Problem> {
    if actor == user_id {
        Err(problems::cannot_follow_self())
    } else {
        Ok(())
    }
}

/// `PUT /v1/users/me/following/{user_id}`.
#[utoipa::path(put, path = "/v1/users/me/following/{user_id}", tag = "users",
    params(("user_id" = Uuid, Path, description = "The user to follow"), MinPositions, IdempotencyHeader),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed path, `min_position` or `Idempotency-Key` (`validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Following yourself (`cannot_follow_self`), or the `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn follow(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Accepted> {
    let followee = parse_id("user_id", &user_id)?;
    not_self(actor, followee)?;
    let fingerprint = format!("follow\n{followee}");
    app.append_once(actor, &key, &fingerprint, async || {
        app.wait(query).await?;
        app.user_exists(followee).await?;
        let event = Event::UserFollowed(UserFollowed {
            follower_id: actor,
            followee_id: followee,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

/// `DELETE /v1/users/me/following/{user_id}`.
#[utoipa::path(delete, path = "/v1/users/me/following/{user_id}", tag = "users",
    params(("user_id" = Uuid, Path, description = "The user to unfollow"), MinPositions, IdempotencyHeader),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed path, `min_position` or `Idempotency-Key` (`validation_failed`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unfollowing yourself (`cannot_follow_self`), or the `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable, or read models behind `min_position` (`broker_unavailable`, `database_unavailable`, `stale_read`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn unfollow(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Accepted> {
    let followee = parse_id("user_id", &user_id)?;
    not_self(actor, followee)?;
    let fingerprint = format!("unfollow\n{followee}");
    app.append_once(actor, &key, &fingerprint, async || {
        app.wait(query).await?;
        app.user_exists(followee).await?;
        let event = Event::UserUnfollowed(UserUnfollowed {
            follower_id: actor,
            followee_id: followee,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

/// Notifications read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadRequest {
    /// A `notification_id`: it and every older notification are marked read. It need not be
    /// listed any more (an unlike withdraws its notification; older ones are still marked).
    up_to: Uuid,
}

/// `POST /v1/me/notifications/read`: marks the caller's notifications read up to one of them.
#[utoipa::path(post, path = "/v1/me/notifications/read", tag = "notifications", request_body = ReadRequest,
    params(IdempotencyHeader), security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted: the event is in the log", body = Accepted),
        (status = 400, description = "Malformed body or `Idempotency-Key` (`invalid_body`, `validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The `Idempotency-Key` was used for a different request (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable (`broker_unavailable`, `database_unavailable`), or the outcome is unknown (`outcome_unknown`: retry with the `Idempotency-Key` of the answer, also in its `idempotency_key` member)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn read_notifications(
    State(app): State<AppState>,
    Actor(actor): Actor,
    key: IdempotencyKey,
    JsonBody(request): JsonBody<ReadRequest>,
) -> Answer<Accepted> {
    let up_to = request.up_to;
    let fingerprint = format!("read\n{up_to}");
    app.append_once(actor, &key, &fingerprint, async || {
        let event = Event::NotificationsRead(NotificationsRead {
            user_id: actor,
            up_to,
        });
        Ok(Envelope::new(actor, event))
    })
    .await
    .map(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_address_is_its_own_registration_scope() {
        let v4 = |s: &str| address_scope(s.parse().expect("an address"));
        assert_eq!(v4("127.0.0.1"), v4("127.0.0.1"));
        assert_ne!(v4("127.0.0.1"), v4("127.0.0.2"));
        // An IPv4 client is the same whether it arrives as IPv4 or IPv4-mapped IPv6.
        assert_eq!(v4("10.1.2.3"), v4("::ffff:10.1.2.3"));
        assert_ne!(v4("10.1.2.3"), Uuid::nil());
    }
}
