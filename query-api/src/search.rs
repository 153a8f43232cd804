//! Search (projection version 2): posts by full text, users by handle and display name.
//!
//! Posts: `q` in web-search syntax (words, "quoted phrases", `-excluded`, `or`), parsed by
//! PostgreSQL's `websearch_to_tsquery` with the projector's configuration (English), ranked by
//! `ts_rank_cd`. Users: trigram similarity (pg_trgm) of `q` to the handle or the lowercased
//! display name, or to a word of them, which makes a prefix or a typo or two match. Both are
//! ordered by score, then id, and paged by a [`ScoreCursor`], so a page never repeats or skips
//! an item of the same results.

use axum::Json;
use axum::extract::{RawQuery, State};
use chronicle_infra::Problem;
use chronicle_infra::http::{MinPositions, query_pairs};
use chronicle_infra::problem::ProblemBody;
use tokio_postgres::Row;
use utoipa::IntoParams;

use crate::AppState;
use crate::cursor::ScoreCursor;
use crate::handlers::{POSTS, Page, Post, UserSummary, page, post_from, summary_from};

/// The longest `q`, in characters after trimming.
pub(crate) const MAX_QUERY_CHARS: usize = 256;

/// The text search configuration queries are parsed with: the projector's (English).
const TEXT_SEARCH_CONFIG: &str = "english";

/// The parameters of a search.
#[derive(Debug, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SearchParams {
    /// What to look for: 1 to 256 characters after trimming, no U+0000.
    q: String,
    /// Items per page, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `q`, trimmed: 400 `validation_failed` when missing, empty, too long or holding U+0000.
fn search_text(query: Option<&str>) -> Result<String, Problem> {
    let pairs = query_pairs(query)?;
    let q = pairs
        .iter()
        .find(|(key, _)| key == "q")
        .map(|(_, value)| value.trim())
        .ok_or_else(|| Problem::bad_parameter("give what to look for as q"))?;
    if q.is_empty() || q.chars().count() > MAX_QUERY_CHARS || q.contains('\0') {
        return Err(Problem::bad_parameter(format!(
            "q must be 1 to {MAX_QUERY_CHARS} characters after trimming"
        )));
    }
    Ok(q.to_owned())
}

/// The cursor after a row whose score is column `score` and id column `id`.
fn score_key(score: usize, id: usize) -> impl Fn(&Row) -> ScoreCursor {
    move |row: &Row| ScoreCursor {
        score: row.get(score),
        id: row.get(id),
    }
}

/// `GET /v1/search/posts`: live posts matching `q`, most relevant first.
#[utoipa::path(get, path = "/v1/search/posts", tag = "search", params(SearchParams, MinPositions),
    responses((status = 200, body = Page<Post>), (status = 400, description = "Missing, empty or over-long q, or a malformed limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, search not built yet (after an upgrade, until `projector rebuild`), or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn posts(
    State(app): State<AppState>,
    RawQuery(query_string): RawQuery,
) -> Result<Json<Page<Post>>, Problem> {
    let q = search_text(query_string.as_deref())?;
    let read = app.read_ranked(query_string).await?;
    let fetch = read.limit + 1;
    let sql = format!(
        "WITH matches AS (
             SELECT s.post_id, ts_rank_cd(s.document, query)::float8 AS score
             FROM {{s}}.post_search s, websearch_to_tsquery('{TEXT_SEARCH_CONFIG}', $1) query
             WHERE s.document @@ query)
         SELECT * FROM (
             {POSTS}) p
         JOIN matches m USING (post_id)
         WHERE (m.score, m.post_id) < ($2, $3)
         ORDER BY m.score DESC, m.post_id DESC LIMIT $4"
    );
    let rows = read
        .query_added(
            "search is",
            &sql,
            &[&q, &read.score_cursor.score, &read.score_cursor.id, &fetch],
        )
        .await?;
    Ok(Json(page(rows, read.limit, score_key(9, 0), post_from)))
}

/// `GET /v1/search/users`: users whose handle or display name matches `q` (a prefix, or with a
/// typo), best match first.
#[utoipa::path(get, path = "/v1/search/users", tag = "search", params(SearchParams, MinPositions),
    responses((status = 200, body = Page<UserSummary>), (status = 400, description = "Missing, empty or over-long q, or a malformed limit, cursor or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, search not built yet (after an upgrade, until `projector rebuild`), or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn users(
    State(app): State<AppState>,
    RawQuery(query_string): RawQuery,
) -> Result<Json<Page<UserSummary>>, Problem> {
    let q = search_text(query_string.as_deref())?.to_lowercase();
    let read = app.read_ranked(query_string).await?;
    let fetch = read.limit + 1;
    let rows = read
        .query_added(
            "search is",
            "SELECT user_id, handle, display_name, score FROM (
             SELECT s.user_id, s.handle, s.display_name,
                    greatest(similarity(s.handle, $1), similarity(lower(s.display_name), $1),
                             word_similarity($1, s.handle),
                             word_similarity($1, lower(s.display_name)))::float8 AS score
             FROM {s}.user_search s
             WHERE s.handle % $1 OR lower(s.display_name) % $1
                OR $1 <% s.handle OR $1 <% lower(s.display_name)) m
         WHERE (score, user_id) < ($2, $3)
         ORDER BY score DESC, user_id DESC LIMIT $4",
            &[&q, &read.score_cursor.score, &read.score_cursor.id, &fetch],
        )
        .await?;
    Ok(Json(page(rows, read.limit, score_key(3, 0), summary_from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_is_required_trimmed_and_bounded() {
        assert_eq!(search_text(Some("q=%20hello%20")).expect("q"), "hello");
        for bad in [
            None,
            Some(""),
            Some("q="),
            Some("q=%20%20"),
            Some("q=a%00b"),
        ] {
            let problem = search_text(bad).expect_err("refused");
            assert_eq!(problem.code(), "validation_failed");
            assert_eq!(problem.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        let long = format!("q={}", "é".repeat(MAX_QUERY_CHARS + 1));
        assert!(search_text(Some(&long)).is_err());
        let longest = format!("q={}", "é".repeat(MAX_QUERY_CHARS));
        assert!(search_text(Some(&longest)).is_ok());
    }
}
