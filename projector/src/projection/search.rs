//! Search (projection version 2): a post's words and a user's names, kept beside the rows they
//! come from. Each change is in the partition of the row it follows (a post's, a user's), so
//! the log orders it.

use deadpool_postgres::Transaction;
use tokio_postgres::Error;
use uuid::Uuid;

use super::execute;

/// The text search configuration of post bodies: English stemming and stop words. The query
/// API parses queries with the same one.
const TEXT_SEARCH_CONFIG: &str = "english";

/// Makes newly registered users findable under their handle and display name.
pub(super) async fn registered(
    tx: &Transaction<'_>,
    schema: &str,
    users: &[Uuid],
    handles: &[&str],
    names: &[&str],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "INSERT INTO {s}.user_search (user_id, handle, display_name)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])
         ON CONFLICT (user_id) DO NOTHING",
        &[&users, &handles, &names],
    )
    .await
}

/// Follows changes of display names (`None`: unchanged).
pub(super) async fn profiles_updated(
    tx: &Transaction<'_>,
    schema: &str,
    users: &[Uuid],
    names: &[Option<&str>],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "UPDATE {s}.user_search s SET display_name = d.display_name
         FROM unnest($1::uuid[], $2::text[]) AS d(user_id, display_name)
         WHERE s.user_id = d.user_id AND d.display_name IS NOT NULL",
        &[&users, &names],
    )
    .await
}

/// Indexes the words of newly published `posts` (already in `posts`).
pub(super) async fn published(
    tx: &Transaction<'_>,
    schema: &str,
    posts: &[Uuid],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        &format!(
            "INSERT INTO {{s}}.post_search (post_id, published_at, document)
             SELECT post_id, published_at, to_tsvector('{TEXT_SEARCH_CONFIG}', body)
             FROM {{s}}.posts WHERE post_id = ANY($1) AND deleted_at IS NULL
             ON CONFLICT (post_id) DO NOTHING"
        ),
        &[&posts],
    )
    .await
}

/// Deleted posts are found no more.
pub(super) async fn deleted(
    tx: &Transaction<'_>,
    schema: &str,
    posts: &[Uuid],
) -> Result<(), Error> {
    execute(
        tx,
        schema,
        "DELETE FROM {s}.post_search WHERE post_id = ANY($1)",
        &[&posts],
    )
    .await
}
