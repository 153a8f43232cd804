//! Accounts: logging in and out, changing a password, and erasure. Only erasure is an event
//! (UserErased, [`crate::erasure`]): passwords and sessions live in the command API's own tables
//! (`command.credentials`, `command.sessions`), never in the log, which is replayed, copied and
//! kept forever.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chronicle_infra::Problem;
use chronicle_infra::http::JsonBody;
use chronicle_infra::limit::rate_limited;
use chronicle_infra::problem::ProblemBody;
use chronicle_infra::token::Issued;
use chrono::SecondsFormat;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Actor, Session};
use crate::handlers::{Accepted, accepted_at};
use crate::idempotency::{CommandError, IdempotencyKey};
use crate::openapi::IdempotencyHeader;
use crate::password::Password;
use crate::{problems, validate};

/// A login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// The handle, as registered (trimmed and lowercased here too).
    #[schema(example = "alice")]
    handle: String,
    #[schema(value_type = String, format = Password, example = "correct horse battery staple")]
    password: Password,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoggedIn {
    user_id: Uuid,
    /// A bearer token (JWT) for this session.
    token: String,
    /// When the token expires (RFC 3339, UTC).
    #[schema(format = DateTime, example = "2026-12-14T09:30:00.000Z")]
    expires_at: String,
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    /// The password now; left out only by a user registered before passwords existed, who has
    /// none.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    current_password: Option<Password>,
    /// 8–128 characters, any (never trimmed).
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    new_password: Password,
}

/// An erasure of the acting user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErasureRequest {
    /// The user's password. A user registered before passwords existed, who has none, sets one
    /// first (`PUT /v1/users/me/password`).
    #[schema(value_type = String, format = Password, example = "correct horse battery staple")]
    password: Password,
}

/// The longest key the failure limit keeps for a handle: handles are at most 30 characters, so
/// a longer one names no one, and need not take more memory than one that could.
const FAILURE_KEY_CHARS: usize = 32;

/// `POST /v1/sessions`: log in with a handle and password.
///
/// An unknown handle, a user without a password and a wrong password get the same answer after
/// the same work (a decoy hash is checked when there is no real one). Each handle may fail five
/// times at once, then once every three minutes (429 `rate_limited` meanwhile, before any check).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = LoginRequest,
    responses(
        (status = 201, description = "Logged in", body = LoggedIn),
        (status = 400, description = "Malformed body (`invalid_body`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Unknown handle or wrong password (`invalid_credentials`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this handle (`rate_limited`; see Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`database_unavailable`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn login(
    State(app): State<AppState>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<(StatusCode, Json<LoggedIn>), Problem> {
    let handle = request.handle.trim().to_lowercase();
    let key: String = handle.chars().take(FAILURE_KEY_CHARS).collect();
    // A handle that breaks the handle rule names no one (and one with U+0000 could not even be
    // looked up): it is an unknown handle, checked against the decoy like any other.
    let (user, stored) = match validate::handle(&handle) {
        Ok(handle) => app.credentials_by_handle(&handle).await?,
        Err(_) => (None, None),
    };
    app.failures
        .attempt(&key, Instant::now())
        .map_err(too_many_failures)?;
    let matches = app.hasher.verify(&request.password, stored).await?;
    let Some(user) = user.filter(|_| matches) else {
        metrics::counter!("command_logins_total", "outcome" => "refused").increment(1);
        return Err(problems::invalid_credentials(StatusCode::UNAUTHORIZED));
    };
    app.failures.succeeded(&key);
    let issued = app.open_session(user).await?;
    metrics::counter!("command_logins_total", "outcome" => "accepted").increment(1);
    tracing::info!(user.id = %user, "logged in");
    Ok((
        StatusCode::CREATED,
        Json(LoggedIn {
            user_id: user,
            token: issued.token,
            expires_at: issued
                .expires_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        }),
    ))
}

/// `DELETE /v1/sessions/current`: log out; the token of the request stops working.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing or invalid token, or its session already ended (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`database_unavailable`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn logout(
    State(app): State<AppState>,
    Session(bearer): Session,
) -> Result<StatusCode, Problem> {
    let client = app.pool.get().await?;
    let end = client
        .prepare_cached("DELETE FROM command.sessions WHERE session_id = $1 AND user_id = $2")
        .await?;
    client
        .execute(&end, &[&bearer.session, &bearer.user])
        .await?;
    tracing::info!(user.id = %bearer.user, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/users/me/password`: set a new password; every session of the user ends, this one
/// included, so every earlier token stops working.
#[utoipa::path(put, path = "/v1/users/me/password", tag = "sessions", request_body = PasswordChange,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Changed; every token of the user stops working"),
        (status = 400, description = "Malformed body (`invalid_body`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "`current_password` wrong, missing, or given by a user who has none (`invalid_credentials`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`new_password` breaks its rule (`validation_failed`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong `current_password`s (`rate_limited`; see Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`database_unavailable`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_password(
    State(app): State<AppState>,
    Actor(user): Actor,
    JsonBody(request): JsonBody<PasswordChange>,
) -> Result<StatusCode, Problem> {
    request.new_password.check_new("new_password")?;
    let stored = app.password_hash(user).await?;
    match (&stored, &request.current_password) {
        (Some(stored), Some(current)) => {
            app.confirm_password(user, current, stored.clone()).await?;
        }
        (Some(_), None) => {
            return Err(problems::invalid_credentials_because(
                StatusCode::FORBIDDEN,
                "current_password is required",
            ));
        }
        (None, Some(_)) => {
            return Err(problems::invalid_credentials_because(
                StatusCode::FORBIDDEN,
                "you have no password yet: leave out current_password to set one",
            ));
        }
        (None, None) => {}
    }
    let new_hash = app.hasher.hash(&request.new_password).await?;
    app.replace_password(user, stored.as_deref(), &new_hash)
        .await?;
    tracing::info!(user.id = %user, "password changed; every session of the user ended");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/users/me`: erase the acting user, once their password is checked.
///
/// The erasure is recorded first, then UserErased is appended, then the user's data key,
/// sessions, password, handle and idempotency keys are deleted: every token of theirs stops
/// working, the handle becomes free, and the personal fields of their events can no longer be
/// read. Once UserErased may be in the log, the erasure always completes: if the broker did not
/// confirm it (503 `outcome_unknown`), it is appended again in the background. If the broker
/// refused it (503 `broker_unavailable`), nothing comes of the request. Repeating it is always
/// safe: a second UserErased changes nothing, so an `Idempotency-Key` is accepted but not needed.
#[utoipa::path(delete, path = "/v1/users/me", tag = "users", request_body = ErasureRequest,
    params(IdempotencyHeader), security(("bearer" = [])),
    responses(
        (status = 202, description = "Erased: UserErased is in the log, and every token of the user stops working", body = Accepted),
        (status = 400, description = "Malformed body or `Idempotency-Key` (`invalid_body`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token, or its session ended, as every session of the user does once their erasure completes (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "`password` wrong, or the user has none yet (`invalid_credentials`; set one with `PUT /v1/users/me/password` first)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong passwords (`rate_limited`; see Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Broker or database unavailable (`broker_unavailable`: nothing comes of the request; `database_unavailable`), or the outcome is unknown (`outcome_unknown`: the erasure completes in the background; retrying, with the `Idempotency-Key` of the answer or without, is safe)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn erase(
    State(app): State<AppState>,
    Actor(user): Actor,
    idempotency: IdempotencyKey,
    JsonBody(request): JsonBody<ErasureRequest>,
) -> Result<(StatusCode, Json<Accepted>), CommandError> {
    let Some(stored) = app.password_hash(user).await? else {
        return Err(problems::invalid_credentials_because(
            StatusCode::FORBIDDEN,
            "you have no password yet: set one with PUT /v1/users/me/password first",
        )
        .into());
    };
    app.confirm_password(user, &request.password, stored)
        .await?;
    let position = app.erase(user, &idempotency).await?;
    tracing::info!(user.id = %user, "user erased");
    Ok(accepted_at(position))
}

/// 429 `rate_limited` for a handle or user with too many failed password checks.
fn too_many_failures(wait: Duration) -> Problem {
    metrics::counter!("http_rate_limited_total", "by" => "password_failures").increment(1);
    rate_limited(wait)
}

impl AppState {
    /// Checks that `password` is `user`'s, whose hash is `stored`, under the per-user failure
    /// limit (429 before any check once exhausted): 403 `invalid_credentials` when it is not.
    async fn confirm_password(
        &self,
        user: Uuid,
        password: &Password,
        stored: String,
    ) -> Result<(), Problem> {
        let key = user.to_string();
        self.failures
            .attempt(&key, Instant::now())
            .map_err(too_many_failures)?;
        if !self.hasher.verify(password, Some(stored)).await? {
            return Err(problems::invalid_credentials(StatusCode::FORBIDDEN));
        }
        self.failures.succeeded(&key);
        Ok(())
    }

    /// A new session of `user`, and its token.
    pub(crate) async fn open_session(&self, user: Uuid) -> Result<Issued, Problem> {
        let session = Uuid::new_v4();
        let issued = self.tokens.issue(user, session)?;
        let client = self.pool.get().await?;
        let open = client
            .prepare_cached(
                "INSERT INTO command.sessions (session_id, user_id, expires_at)
                 VALUES ($1, $2, $3)",
            )
            .await?;
        client
            .execute(&open, &[&session, &user, &issued.expires_at])
            .await?;
        Ok(issued)
    }

    /// The user of `handle` (if any) and their password hash (if they have one).
    async fn credentials_by_handle(
        &self,
        handle: &str,
    ) -> Result<(Option<Uuid>, Option<String>), Problem> {
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached(
                "SELECT h.user_id, c.password_hash FROM command.handles h
                 LEFT JOIN command.credentials c USING (user_id) WHERE h.handle = $1",
            )
            .await?;
        Ok(match client.query_opt(&find, &[&handle]).await? {
            Some(row) => (Some(row.get(0)), row.get(1)),
            None => (None, None),
        })
    }

    /// `user`'s password hash, if they have one.
    async fn password_hash(&self, user: Uuid) -> Result<Option<String>, Problem> {
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached("SELECT password_hash FROM command.credentials WHERE user_id = $1")
            .await?;
        Ok(client
            .query_opt(&find, &[&user])
            .await?
            .map(|row| row.get(0)))
    }

    /// Replaces `user`'s password hash `old` (none: they have none yet) with `new`, and ends
    /// every session of theirs, in one transaction. If the hash is no longer `old` (a
    /// concurrent change won), nothing changes and the answer is 403.
    async fn replace_password(
        &self,
        user: Uuid,
        old: Option<&str>,
        new: &str,
    ) -> Result<(), Problem> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let replaced =
            match old {
                Some(old) => {
                    transaction
                        .execute(
                            "UPDATE command.credentials SET password_hash = $3, changed_at = now()
                         WHERE user_id = $1 AND password_hash = $2",
                            &[&user, &old, &new],
                        )
                        .await?
                }
                None => transaction
                    .execute(
                        "INSERT INTO command.credentials (user_id, password_hash) VALUES ($1, $2)
                         ON CONFLICT (user_id) DO NOTHING",
                        &[&user, &new],
                    )
                    .await?,
            };
        if replaced == 0 {
            return Err(problems::invalid_credentials_because(
                StatusCode::FORBIDDEN,
                "the password was changed meanwhile; give the new one",
            ));
        }
        transaction
            .execute("DELETE FROM command.sessions WHERE user_id = $1", &[&user])
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}

/// Deletes the sessions whose tokens have expired, every `every`, for as long as the process
/// runs. A legacy session (no `expires_at`) goes `lifetime` after the upgrade that made it, when
/// every token issued before sessions existed has expired. Both wait a minute more, the tokens'
/// clock-skew leeway.
pub(crate) async fn cleanup(pool: Pool, lifetime: Duration, every: Duration) {
    let purge = crate::purge::Purge {
        sql: "DELETE FROM command.sessions WHERE session_id IN (
                  SELECT session_id FROM command.sessions
                  WHERE expires_at < now() - interval '1 minute'
                     OR (expires_at IS NULL
                         AND created_at < now() - make_interval(secs => $1) - interval '1 minute')
                  LIMIT $2)",
        what: "expired sessions",
        age: lifetime,
    };
    crate::purge::every(pool, every, purge).await;
}
