//! The caller's notifications: private reads, for the bearer of a token.
//!
//! The query API checks tokens with public keys only ([`chronicle_infra::token::Verifier`]).
//! Notifications are projection version 2: while the active generation is one of version 1
//! (a database upgraded from an earlier release, before `projector rebuild` has built the new
//! one), they are not there yet, and these reads answer 503 `stale_read` saying so.

use axum::Json;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use chronicle_infra::Problem;
use chronicle_infra::problem::ProblemBody;
use chronicle_infra::token;
use serde::Serialize;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::cursor::Cursor;
use crate::handlers::{Page, Paging, UserSummary, page, timestamp};
use chronicle_infra::http::MinPositions;

/// What happened, told to the user it happened to.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Notification {
    /// Orders notifications (newest first); `POST /v1/me/notifications/read` takes it as `up_to`.
    notification_id: Uuid,
    /// `liked` (your post), `followed` (you), `replied` (to your post).
    #[schema(example = "liked")]
    kind: String,
    /// Who did it.
    actor: UserSummary,
    /// The post liked, or the reply; null for `followed`.
    #[schema(required = true)]
    post_id: Option<Uuid>,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2026-11-26T09:30:00.123Z")]
    created_at: String,
    /// Whether it is at or before the newest notification marked read.
    read: bool,
}

/// How many notifications the caller has not read.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UnreadCount {
    count: i64,
}

/// The user a bearer token speaks for.
pub(crate) struct Reader(Uuid);

impl FromRequestParts<AppState> for Reader {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Reader, Problem> {
        let bearer = state
            .tokens
            .authenticate(token::bearer(&parts.headers)?)
            .await?;
        Ok(Reader(bearer.user))
    }
}

/// The id below which nothing is read for a user who never marked anything read.
const NOTHING_READ: Uuid = Uuid::nil();

/// `GET /v1/me/notifications`: the caller's notifications, newest first.
#[utoipa::path(get, path = "/v1/me/notifications", tag = "notifications", params(Paging, MinPositions),
    security(("bearer" = [])),
    responses((status = 200, body = Page<Notification>), (status = 400, description = "Malformed limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, notifications not built yet (after an upgrade, until `projector rebuild`), or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Reader(user): Reader,
    RawQuery(query_string): RawQuery,
) -> Result<Json<Page<Notification>>, Problem> {
    let read = app.read(query_string).await?;
    let fetch = read.limit + 1;
    // Notifications are ordered by id alone; the cursor's time is not compared.
    let rows = read
        .query_added(
            "notifications are",
            "SELECT n.notification_id, n.kind, n.post_id, n.created_at,
                u.user_id, u.handle, u.display_name,
                n.notification_id <= coalesce(
                    (SELECT up_to FROM {s}.notification_reads WHERE user_id = $1), $4)
         FROM {s}.notifications n JOIN {s}.users u ON u.user_id = n.actor_id
         WHERE n.recipient_id = $1 AND n.notification_id < $2
         ORDER BY n.notification_id DESC LIMIT $3",
            &[&user, &read.cursor.id, &fetch, &NOTHING_READ],
        )
        .await?;
    let key = |row: &Row| Cursor {
        at: row.get(3),
        id: row.get(0),
    };
    Ok(Json(page(rows, read.limit, key, |row| {
        notification_at(row, 0)
    })))
}

/// The notification in eight columns from column `at`: id, kind, post, time, the actor's id,
/// handle and display name, and whether it is read.
pub(crate) fn notification_at(row: &Row, at: usize) -> Notification {
    Notification {
        notification_id: row.get(at),
        kind: row.get(at + 1),
        post_id: row.get(at + 2),
        created_at: timestamp(row.get(at + 3)),
        actor: UserSummary {
            user_id: row.get(at + 4),
            handle: row.get(at + 5),
            display_name: row.get(at + 6),
        },
        read: row.get(at + 7),
    }
}

/// `GET /v1/me/notifications/unread-count`.
#[utoipa::path(get, path = "/v1/me/notifications/unread-count", tag = "notifications", params(MinPositions),
    security(("bearer" = [])),
    responses((status = 200, body = UnreadCount), (status = 400, description = "Malformed position (`invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, notifications not built yet (after an upgrade, until `projector rebuild`), or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn unread_count(
    State(app): State<AppState>,
    Reader(user): Reader,
    RawQuery(query_string): RawQuery,
) -> Result<Json<UnreadCount>, Problem> {
    let read = app.read(query_string).await?;
    // Counted from the recipient's index alone (no join to the actors, unlike the list): the
    // count can run one ahead of the list for the moment an actor's registration, in another
    // partition, is not applied yet.
    let rows = read
        .query_added(
            "notifications are",
            "SELECT count(*) FROM {s}.notifications
             WHERE recipient_id = $1 AND notification_id > coalesce(
                 (SELECT up_to FROM {s}.notification_reads WHERE user_id = $1), $2)",
            &[&user, &NOTHING_READ],
        )
        .await?;
    let count = rows.first().map_or(0, |row| row.get(0));
    Ok(Json(UnreadCount { count }))
}
