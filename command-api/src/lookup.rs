//! The existence checks of commands, coalesced ([`chronicle_infra::coalesce`]).
//!
//! Most commands name a post or a user that must exist (a like, an unlike, a follow), and check
//! it with one indexed read of the read models. A check joins a batch only after its own
//! `min_position` wait, so it sees at least what it would have seen on its own.

use chronicle_infra::Problem;
use chronicle_infra::coalesce::Coalescer;
use deadpool_postgres::Pool;
use uuid::Uuid;

/// The checks commands make against the read models.
#[derive(Clone)]
pub(crate) struct Lookups {
    /// Live posts, to their authors.
    posts: Coalescer,
    /// Registered users, to themselves.
    users: Coalescer,
}

impl Lookups {
    /// Checks answered from `pool`'s database.
    pub(crate) fn start(pool: &Pool) -> Lookups {
        Lookups {
            posts: Coalescer::sql(pool, |schema| {
                format!(
                    "SELECT post_id, author_id FROM {schema}.posts
                     WHERE post_id = ANY($1) AND deleted_at IS NULL"
                )
            }),
            users: Coalescer::sql(pool, |schema| {
                format!("SELECT user_id, user_id FROM {schema}.users WHERE user_id = ANY($1)")
            }),
        }
    }

    /// The author of the live (published, not deleted) post `post_id`, if there is one.
    pub(crate) async fn post_author(
        &self,
        schema: &str,
        post_id: Uuid,
    ) -> Result<Option<Uuid>, Problem> {
        self.posts.check(schema, post_id).await
    }

    /// Whether `user_id` is registered.
    pub(crate) async fn user_exists(&self, schema: &str, user_id: Uuid) -> Result<bool, Problem> {
        Ok(self.users.check(schema, user_id).await?.is_some())
    }
}
