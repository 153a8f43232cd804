//! One handler per read. Each parses its parameters, waits for `min_position` if asked, and
//! runs one keyset query against the read models.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use chronicle_infra::Problem;
use chronicle_infra::http::MinPositions;
use chronicle_infra::http::{Segment, min_positions, parse_id, query_pairs, wait_for_positions};
use chronicle_infra::problem::ProblemBody;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::cursor::{Cursor, PageKey, ScoreCursor};

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

type Answer<T> = Result<Json<T>, Problem>;

pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A user's profile and counters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Profile {
    user_id: Uuid,
    handle: String,
    display_name: String,
    bio: String,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2026-11-26T09:30:00.123Z")]
    joined_at: String,
    post_count: i64,
    follower_count: i64,
    following_count: i64,
    likes_received: i64,
    likes_given: i64,
}

/// Who a user is, in short.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserSummary {
    pub(crate) user_id: Uuid,
    pub(crate) handle: String,
    pub(crate) display_name: String,
}

/// A post with its author.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Post {
    post_id: Uuid,
    author: UserSummary,
    body: String,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2026-11-26T09:30:00.123Z")]
    published_at: String,
    like_count: i64,
    /// The post this one replies to, or null.
    #[schema(required = true)]
    reply_to: Option<Uuid>,
    /// Replies to this post that are not deleted.
    reply_count: i64,
}

/// One like of a post.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Like {
    user: UserSummary,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2026-11-26T09:30:00.123Z")]
    liked_at: String,
}

/// A page of a list, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page<T: ToSchema> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// Paging parameters of list endpoints.
#[derive(Debug, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Paging {
    /// Items per page, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One request's read: its parameters and the generation of read models it reads, taken once
/// so that a request never mixes generations.
pub(crate) struct Read<'a> {
    app: &'a AppState,
    schema: String,
    pub(crate) limit: i64,
    pub(crate) cursor: Cursor,
    /// The cursor of a list ordered by score ([`AppState::read_ranked`]).
    pub(crate) score_cursor: ScoreCursor,
}

impl AppState {
    /// Parses `limit`, `cursor` and `min_position`, waits for the positions, and picks the
    /// active generation.
    pub(crate) async fn read(&self, query: Option<String>) -> Result<Read<'_>, Problem> {
        self.read_paged(query, false).await
    }

    /// [`AppState::read`] for a list ordered by score: `cursor` is a [`ScoreCursor`].
    pub(crate) async fn read_ranked(&self, query: Option<String>) -> Result<Read<'_>, Problem> {
        self.read_paged(query, true).await
    }

    async fn read_paged(&self, query: Option<String>, ranked: bool) -> Result<Read<'_>, Problem> {
        let pairs = query_pairs(query.as_deref())?;
        self.read_with(&pairs, ranked).await
    }

    /// [`AppState::read`] of a query string already split into `pairs`.
    pub(crate) async fn read_with(
        &self,
        pairs: &[(String, String)],
        ranked: bool,
    ) -> Result<Read<'_>, Problem> {
        let positions = min_positions(pairs)?;
        let mut params = Read {
            app: self,
            schema: String::new(),
            limit: DEFAULT_LIMIT,
            cursor: Cursor::start(),
            score_cursor: ScoreCursor::start(),
        };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    params.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            Problem::bad_parameter(format!(
                                "limit must be a whole number from 1 to {MAX_LIMIT}"
                            ))
                        })?;
                }
                "cursor" if ranked => params.score_cursor = ScoreCursor::decode(value)?,
                "cursor" => params.cursor = storable(Cursor::decode(value)?)?,
                _ => {}
            }
        }
        wait_for_positions(&self.progress, &positions, self.consistency_wait).await?;
        params.schema = self.progress.require_read_schema()?;
        Ok(params)
    }
}

/// PostgreSQL's earliest `timestamptz`, 4714-11-24 00:00:00 BC, in microseconds since the Unix
/// epoch. No item is older.
const EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

/// A decoded cursor whose time PostgreSQL can compare with. One from before its earliest time
/// was not made by this service (its query would fail: a 500 for a client's mistake), so it is a
/// 400 `invalid_cursor` like any other forged cursor.
fn storable(cursor: Cursor) -> Result<Cursor, Problem> {
    if cursor.at.timestamp_micros() < EARLIEST_MICROS {
        return Err(crate::cursor::invalid_cursor());
    }
    Ok(cursor)
}

impl Read<'_> {
    /// Runs `sql`, whose tables are named `{s}.<table>`, against this read's generation.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Problem> {
        Ok(self.run(sql, params).await??)
    }

    /// Like [`Read::query`], for read models that projection version 2 added (`what` names
    /// them): on a generation of version 1, which lacks their tables, 503 `stale_read` saying
    /// that `projector rebuild` builds them.
    pub(crate) async fn query_added(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Problem> {
        self.run(sql, params).await?.map_err(|err| {
            if err.code() != Some(&SqlState::UNDEFINED_TABLE) {
                return err.into();
            }
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stale_read",
                format!(
                    "{what} not in the active read models yet: the active generation was built \
                     by older projection code, and `projector rebuild` builds a current one from \
                     the whole history"
                ),
            )
            .with_retry_after(std::time::Duration::from_secs(60))
        })
    }

    /// Runs `sql` against this read's generation: no connection is a problem (outer), a
    /// failing statement comes back as the database said it (inner), for a caller that tells
    /// some apart.
    async fn run(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Result<Vec<Row>, tokio_postgres::Error>, Problem> {
        let client = self.app.pool.get().await?;
        Ok(async {
            let statement = client
                .prepare_cached(&sql.replace("{s}", &self.schema))
                .await?;
            client.query(&statement, params).await
        }
        .await)
    }

    pub(crate) async fn require_user(&self, user_id: Uuid) -> Result<(), Problem> {
        let rows = self
            .query("SELECT 1 FROM {s}.users WHERE user_id = $1", &[&user_id])
            .await?;
        if rows.is_empty() {
            Err(user_not_found())
        } else {
            Ok(())
        }
    }

    /// The profile of `user_id`; 404 `user_not_found` when there is no such user.
    async fn profile(&self, user_id: Uuid) -> Result<Profile, Problem> {
        let rows = self
            .query(&format!("{PROFILE} WHERE u.user_id = $1"), &[&user_id])
            .await?;
        rows.first().map(profile_from).ok_or_else(user_not_found)
    }
}

/// 404 `user_not_found`.
fn user_not_found() -> Problem {
    Problem::not_found("user_not_found", "no such user").titled("No such user")
}

/// 404 `post_not_found`.
fn post_not_found() -> Problem {
    Problem::not_found("post_not_found", "no such post").titled("No such post")
}

/// Turns `limit + 1` rows into a page: the extra row only says there is a next page.
pub(crate) fn page<T: ToSchema, K: PageKey>(
    rows: Vec<Row>,
    limit: i64,
    key: impl Fn(&Row) -> K,
    item: impl Fn(&Row) -> T,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = (rows.len() > limit).then(|| key(&rows[limit - 1]).token());
    Page {
        items: rows.iter().take(limit).map(item).collect(),
        next_cursor,
    }
}

/// `GET /readyz`: 200 when the read models can be queried.
pub(crate) async fn ready(State(app): State<AppState>) -> StatusCode {
    let database = match app.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    if database && app.progress.read_schema().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

const PROFILE: &str = "SELECT u.user_id, u.handle, u.display_name, u.bio, u.joined_at,
        coalesce(c.post_count, 0), coalesce(c.follower_count, 0), coalesce(c.following_count, 0),
        coalesce(c.likes_received, 0), coalesce(c.likes_given, 0)
    FROM {s}.users u LEFT JOIN {s}.user_counters c ON c.user_id = u.user_id";

fn profile_from(row: &Row) -> Profile {
    Profile {
        user_id: row.get(0),
        handle: row.get(1),
        display_name: row.get(2),
        bio: row.get(3),
        joined_at: timestamp(row.get(4)),
        post_count: row.get(5),
        follower_count: row.get(6),
        following_count: row.get(7),
        likes_received: row.get(8),
        likes_given: row.get(9),
    }
}

/// `GET /v1/users/{user_id}`.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = Uuid, Path, description = "The user"), MinPositions),
    responses((status = 200, body = Profile), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn profile(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Profile> {
    let user_id = parse_id("user_id", &user_id)?;
    let read = app.read(query).await?;
    read.profile(user_id).await.map(Json)
}

/// `GET /v1/users/by-handle/{handle}`: handles are matched as registered (trimmed, lowercase).
#[utoipa::path(get, path = "/v1/users/by-handle/{handle}", tag = "users", params(("handle" = String, Path, description = "The handle (matched trimmed and lowercased)"), MinPositions),
    responses((status = 200, body = Profile), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn profile_by_handle(
    State(app): State<AppState>,
    Segment(handle): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Profile> {
    let handle = handle.trim().to_lowercase();
    let read = app.read(query).await?;
    if handle.contains('\0') {
        // No handle has one, and PostgreSQL text cannot carry it to the query.
        return Err(user_not_found());
    }
    // Should two users hold one handle (registrations written before the command API stopped
    // freeing the handles of events whose outcome was unknown), the one who registered first
    // (earliest `joined_at`, then the lowest `user_id`) has it, as the projection documents.
    let rows = read
        .query(
            &format!("{PROFILE} WHERE u.handle = $1 ORDER BY u.joined_at, u.user_id LIMIT 1"),
            &[&handle],
        )
        .await?;
    rows.first()
        .map(profile_from)
        .map(Json)
        .ok_or_else(user_not_found)
}

pub(crate) const POSTS: &str = "SELECT p.post_id, p.body, p.published_at, p.like_count,
        u.user_id, u.handle, u.display_name, p.reply_to, coalesce(c.reply_count, 0)
    FROM {s}.posts p JOIN {s}.users u ON u.user_id = p.author_id
    LEFT JOIN {s}.post_counters c ON c.post_id = p.post_id
    WHERE p.deleted_at IS NULL";

const POSTS_PAGE: &str = "AND (p.published_at, p.post_id) < ($1, $2)
    ORDER BY p.published_at DESC, p.post_id DESC LIMIT $3";

pub(crate) fn post_from(row: &Row) -> Post {
    post_at(row, 0)
}

/// The post in the columns of [`POSTS`], starting at column `at`.
pub(crate) fn post_at(row: &Row, at: usize) -> Post {
    Post {
        post_id: row.get(at),
        body: row.get(at + 1),
        published_at: timestamp(row.get(at + 2)),
        like_count: row.get(at + 3),
        reply_to: row.get(at + 7),
        reply_count: row.get(at + 8),
        author: UserSummary {
            user_id: row.get(at + 4),
            handle: row.get(at + 5),
            display_name: row.get(at + 6),
        },
    }
}

fn post_key(row: &Row) -> Cursor {
    Cursor {
        at: row.get(2),
        id: row.get(0),
    }
}

/// Home timelines of users who follow at most this many are merged from one index scan per
/// author ([`TIMELINE_MERGED`]), larger ones read from the global feed ([`TIMELINE_FILTERED`]).
/// Merging reads about one page per followee (0.14 ms for 4 followees, 17 ms for 1,407 in a
/// 46,000-post test); filtering reads the newest posts of everyone until a page of them is by
/// followees (0.5 ms for the one who follows 1,407 of 2,000 users, 11 ms for 4 followees and
/// 24 ms for none, the whole feed).
const TIMELINE_MERGE_MAX_FOLLOWING: i64 = 200;

/// The home timeline of `$4`, merged: the newest page of the user's own posts and of each
/// followee's, each an index scan of `posts_by_author`; the newest page of those, then joined
/// to authors and counters.
const TIMELINE_MERGED: &str = "SELECT p.post_id, p.body, p.published_at, p.like_count,
        u.user_id, u.handle, u.display_name, p.reply_to, coalesce(c.reply_count, 0)
    FROM (SELECT p.* FROM (SELECT $4::uuid AS author_id
                           UNION SELECT followee_id FROM {s}.follows WHERE follower_id = $4) a
          CROSS JOIN LATERAL (
              SELECT * FROM {s}.posts p
              WHERE p.author_id = a.author_id AND p.deleted_at IS NULL
                AND (p.published_at, p.post_id) < ($1, $2)
              ORDER BY p.published_at DESC, p.post_id DESC LIMIT $3) p
          ORDER BY p.published_at DESC, p.post_id DESC LIMIT $3) p
    JOIN {s}.users u ON u.user_id = p.author_id
    LEFT JOIN {s}.post_counters c ON c.post_id = p.post_id
    ORDER BY p.published_at DESC, p.post_id DESC";

/// The home timeline of `$4`, filtered: the global feed (`posts_feed`), keeping the user's
/// own posts and their followees'.
const TIMELINE_FILTERED: &str = "AND (p.author_id = $4 OR p.author_id IN (
        SELECT followee_id FROM {s}.follows WHERE follower_id = $4))";

/// A page of posts: `sql` takes the cursor as `$1, $2`, the rows to fetch as `$3` and `user`,
/// if any, as `$4`.
async fn post_page(read: &Read<'_>, sql: &str, user: Option<&Uuid>) -> Answer<Page<Post>> {
    let fetch = read.limit + 1;
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&read.cursor.at, &read.cursor.id, &fetch];
    if let Some(user) = user {
        args.push(user);
    }
    let rows = read.query(sql, &args).await?;
    Ok(Json(page(rows, read.limit, post_key, post_from)))
}

/// A page of posts about one user (`$4`): 404 `user_not_found` when there is no such user.
/// Posts name their author, and only a user follows, so a page with posts proves the user
/// exists; only an empty page costs a second statement to tell "no posts" from "no user".
async fn user_post_page(read: &Read<'_>, sql: &str, user_id: Uuid) -> Answer<Page<Post>> {
    let page = post_page(read, sql, Some(&user_id)).await?;
    if page.items.is_empty() {
        read.require_user(user_id).await?;
    }
    Ok(page)
}

/// `GET /v1/feed`: every post, newest first.
#[utoipa::path(get, path = "/v1/feed", tag = "posts", params(Paging, MinPositions),
    responses((status = 200, body = Page<Post>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn global_feed(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Answer<Page<Post>> {
    let read = app.read(query).await?;
    post_page(&read, &format!("{POSTS} {POSTS_PAGE}"), None).await
}

/// `GET /v1/users/{user_id}/posts`: the author feed.
#[utoipa::path(get, path = "/v1/users/{user_id}/posts", tag = "posts", params(("user_id" = Uuid, Path, description = "The user"), Paging, MinPositions),
    responses((status = 200, body = Page<Post>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn author_feed(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Page<Post>> {
    let user_id = parse_id("user_id", &user_id)?;
    let read = app.read(query).await?;
    let sql = format!("{POSTS} AND p.author_id = $4 {POSTS_PAGE}");
    user_post_page(&read, &sql, user_id).await
}

/// `GET /v1/users/{user_id}/timeline`: posts by the user and everyone they follow.
#[utoipa::path(get, path = "/v1/users/{user_id}/timeline", tag = "posts", params(("user_id" = Uuid, Path, description = "The user"), Paging, MinPositions),
    responses((status = 200, body = Page<Post>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn timeline(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Page<Post>> {
    let user_id = parse_id("user_id", &user_id)?;
    let read = app.read(query).await?;
    // The profile tells whether the user exists and how many they follow.
    if read.profile(user_id).await?.following_count <= TIMELINE_MERGE_MAX_FOLLOWING {
        post_page(&read, TIMELINE_MERGED, Some(&user_id)).await
    } else {
        let sql = format!("{POSTS} {TIMELINE_FILTERED} {POSTS_PAGE}");
        post_page(&read, &sql, Some(&user_id)).await
    }
}

/// `GET /v1/posts/{post_id}`.
#[utoipa::path(get, path = "/v1/posts/{post_id}", tag = "posts", params(("post_id" = Uuid, Path, description = "The post"), MinPositions),
    responses((status = 200, body = Post), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such post (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn post(
    State(app): State<AppState>,
    Segment(post_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Post> {
    let post_id = parse_id("post_id", &post_id)?;
    let read = app.read(query).await?;
    let rows = read
        .query(&format!("{POSTS} AND p.post_id = $1"), &[&post_id])
        .await?;
    rows.first()
        .map(post_from)
        .map(Json)
        .ok_or_else(post_not_found)
}

pub(crate) fn summary_from(row: &Row) -> UserSummary {
    UserSummary {
        user_id: row.get(0),
        handle: row.get(1),
        display_name: row.get(2),
    }
}

fn summary_key(row: &Row) -> Cursor {
    Cursor {
        at: row.get(3),
        id: row.get(0),
    }
}

/// `GET /v1/posts/{post_id}/likes`: who liked a post, most recent first.
#[utoipa::path(get, path = "/v1/posts/{post_id}/likes", tag = "posts", params(("post_id" = Uuid, Path, description = "The post"), Paging, MinPositions),
    responses((status = 200, body = Page<Like>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such post (`post_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn likes(
    State(app): State<AppState>,
    Segment(post_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Page<Like>> {
    let post_id = parse_id("post_id", &post_id)?;
    let read = app.read(query).await?;
    let live = read
        .query(
            "SELECT 1 FROM {s}.posts WHERE post_id = $1 AND deleted_at IS NULL",
            &[&post_id],
        )
        .await?;
    if live.is_empty() {
        return Err(post_not_found());
    }
    let fetch = read.limit + 1;
    let rows = read
        .query(
            "SELECT u.user_id, u.handle, u.display_name, l.liked_at
             FROM (SELECT user_id, liked_at FROM {s}.likes
                   WHERE post_id = $1 AND (liked_at, user_id) < ($2, $3)
                   ORDER BY liked_at DESC, user_id DESC LIMIT $4) l
             JOIN {s}.users u ON u.user_id = l.user_id
             ORDER BY l.liked_at DESC, l.user_id DESC",
            &[&post_id, &read.cursor.at, &read.cursor.id, &fetch],
        )
        .await?;
    Ok(Json(page(rows, read.limit, summary_key, |row| Like {
        user: summary_from(row),
        liked_at: timestamp(row.get(3)),
    })))
}

/// Which side of a follow a list shows.
#[derive(Clone, Copy)]
enum Side {
    Followers,
    Following,
}

async fn follow_page(
    app: &AppState,
    user_id: &str,
    query: Option<String>,
    side: Side,
) -> Answer<Page<UserSummary>> {
    let user_id = parse_id("user_id", user_id)?;
    let read = app.read(query).await?;
    let (listed, owner) = match side {
        Side::Followers => ("follower_id", "followee_id"),
        Side::Following => ("followee_id", "follower_id"),
    };
    let fetch = read.limit + 1;
    // The page is cut from the index before the users are joined: joined first, a user who
    // follows 1,407 others cost 4,292 buffers a page instead of 67.
    let sql = format!(
        "SELECT u.user_id, u.handle, u.display_name, f.followed_at
         FROM (SELECT {listed}, followed_at FROM {{s}}.follows
               WHERE {owner} = $1 AND (followed_at, {listed}) < ($2, $3)
               ORDER BY followed_at DESC, {listed} DESC LIMIT $4) f
         JOIN {{s}}.users u ON u.user_id = f.{listed}
         ORDER BY f.followed_at DESC, f.{listed} DESC"
    );
    let rows = read
        .query(&sql, &[&user_id, &read.cursor.at, &read.cursor.id, &fetch])
        .await?;
    // A follow names both users: only an empty page needs to ask whether the user exists.
    if rows.is_empty() {
        read.require_user(user_id).await?;
    }
    Ok(Json(page(rows, read.limit, summary_key, summary_from)))
}

/// `GET /v1/users/{user_id}/followers`.
#[utoipa::path(get, path = "/v1/users/{user_id}/followers", tag = "users", params(("user_id" = Uuid, Path, description = "The user"), Paging, MinPositions),
    responses((status = 200, body = Page<UserSummary>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn followers(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Page<UserSummary>> {
    follow_page(&app, &user_id, query, Side::Followers).await
}

/// `GET /v1/users/{user_id}/following`.
#[utoipa::path(get, path = "/v1/users/{user_id}/following", tag = "users", params(("user_id" = Uuid, Path, description = "The user"), Paging, MinPositions),
    responses((status = 200, body = Page<UserSummary>), (status = 400, description = "Malformed id, limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn following(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    RawQuery(query): RawQuery,
) -> Answer<Page<UserSummary>> {
    follow_page(&app, &user_id, query, Side::Following).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_from_before_the_earliest_timestamp_are_invalid() {
        let at = |micros| Cursor {
            at: DateTime::from_timestamp_micros(micros).expect("in chrono's range"),
            id: Uuid::nil(),
        };
        assert!(storable(at(EARLIEST_MICROS)).is_ok());
        assert!(storable(Cursor::start()).is_ok());
        assert!(storable(at(0)).is_ok());
        let problem = storable(at(EARLIEST_MICROS - 1)).expect_err("too early");
        assert_eq!(problem.code(), "invalid_cursor");
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        let forged = Cursor::decode(&at(-8_000_000_000_000_000_000).encode()).expect("decodes");
        assert!(storable(forged).is_err());
    }
}
