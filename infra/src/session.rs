//! Sessions: whether a validly signed token still speaks for its user.
//!
//! The command API opens a session at registration and at each login, and ends it at logout, at
//! a password change (all the user's sessions) and at erasure. It keeps them in its table
//! `command.sessions` (`session_id`, `user_id`, …); every service that accepts tokens reads that
//! table with [`LIVE_SESSIONS`], the one statement outside the command API that touches its
//! schema. A query API connected with its own role needs `SELECT` on that table.
//!
//! The check runs on every authenticated request, so that a session ended by one instance of a
//! service is refused by every instance at once: there is no cache to invalidate. Its cost is one
//! indexed read, and under load checks go together ([`crate::coalesce`]): a few statements at a
//! time carry all of them.

use deadpool_postgres::Pool;

use crate::Problem;
use crate::coalesce::Coalescer;
use crate::token::{Bearer, CachingVerifier, Verifier};

/// The statement that finds the live sessions among `$1`, with their users.
pub const LIVE_SESSIONS: &str =
    "SELECT session_id, user_id FROM command.sessions WHERE session_id = ANY($1)";

/// Checks tokens: their signature and lifetime (remembered), then their session (asked).
pub struct Sessions {
    tokens: CachingVerifier,
    live: Coalescer,
}

impl Sessions {
    /// Accepts the tokens `verifier` accepts whose session is live in `pool`'s database.
    pub fn new(verifier: Verifier, pool: &Pool) -> Sessions {
        Sessions {
            tokens: CachingVerifier::new(verifier),
            live: Coalescer::sql(pool, |_| LIVE_SESSIONS.to_owned()),
        }
    }

    /// Who `token` speaks for, if it is validly signed, unexpired, and its session is live.
    pub async fn authenticate(&self, token: &str) -> Result<Bearer, Problem> {
        let bearer = self.tokens.verify(token)?;
        self.check_live(bearer).await?;
        Ok(bearer)
    }

    /// Whether `bearer`'s session is live (and is its user's).
    async fn check_live(&self, bearer: Bearer) -> Result<(), Problem> {
        match self.live.check("command", bearer.session).await? {
            Some(user) if user == bearer.user => Ok(()),
            found => {
                tracing::debug!(
                    user.id = %bearer.user,
                    session.id = %bearer.session,
                    other_user = found.is_some(),
                    "token refused: its session is not live"
                );
                Err(ended())
            }
        }
    }
}

/// 401 `unauthorized`: the token's session ended.
fn ended() -> Problem {
    Problem::unauthorized(
        "the session of this bearer token has ended (logged out, password changed, or \
         account erased); log in again",
    )
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}
