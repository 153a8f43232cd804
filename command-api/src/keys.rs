//! Data keys: one per user, sealing the personal fields of the events they cause
//! ([`chronicle_events::personal`]). They live in `command.data_keys`, outside the log; the
//! projector reads them to open what it applies.
//!
//! A key never changes (an erasure destroys it, [`crate::erasure`]), so each instance remembers
//! the keys it used, up to [`REMEMBERED_KEYS`]: a user's commands look theirs up once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chronicle_events::DataKey;
use chronicle_events::personal::KEY_VERSION;
use chronicle_infra::Problem;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::erasure::GATE_SHARED;
use crate::problems;

/// Keys an instance remembers at most; past that it forgets them all.
const REMEMBERED_KEYS: usize = 100_000;

/// The users' data keys.
pub(crate) struct DataKeys {
    pool: Pool,
    remembered: Mutex<HashMap<Uuid, DataKey>>,
}

impl DataKeys {
    /// Keys kept in `pool`'s database.
    pub(crate) fn new(pool: Pool) -> DataKeys {
        DataKeys {
            pool,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// The data key of `user`, made now if they have none yet (a new user, or one registered
    /// before personal fields were sealed), unless they are erased: then 401 `unauthorized`.
    ///
    /// A key is never made for a user with a row in `command.erasures`, and is made under the
    /// shared erasure gate ([`crate::erasure`]), which an erasure takes exclusively while it
    /// records itself: a key made concurrently with the erasure's beginning either commits
    /// before the erasure's row (and the erasure's completion deletes it) or sees the row and
    /// is refused. A key that exists is still returned while the erasure is pending: those
    /// commands land before or after UserErased, which the projector undoes or ignores.
    pub(crate) async fn of(&self, user: Uuid) -> Result<DataKey, Problem> {
        if let Some(key) = self.held().get(&user) {
            return Ok(key.clone());
        }
        let fresh = DataKey::generate();
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let gate = transaction.prepare_cached(GATE_SHARED).await?;
        transaction.execute(&gate, &[&user]).await?;
        let find_or_make = transaction
            .prepare_cached(
                "WITH made AS (
                     INSERT INTO command.data_keys (user_id, key_version, data_key)
                     SELECT $1::uuid, $2::integer, $3::bytea
                     WHERE NOT EXISTS (SELECT 1 FROM command.erasures WHERE user_id = $1)
                     ON CONFLICT (user_id) DO NOTHING
                     RETURNING data_key)
                 SELECT data_key FROM made
                 UNION ALL
                 SELECT data_key FROM command.data_keys WHERE user_id = $1",
            )
            .await?;
        let version = i32::try_from(KEY_VERSION).unwrap_or(i32::MAX);
        let mut row = transaction
            .query_opt(&find_or_make, &[&user, &version, &fresh.as_bytes()])
            .await?;
        if row.is_none() {
            // A key made by a concurrent call, committed after the statement's snapshot, is
            // a conflict the statement cannot read back: a new statement sees it.
            let find = transaction
                .prepare_cached("SELECT data_key FROM command.data_keys WHERE user_id = $1")
                .await?;
            row = transaction.query_opt(&find, &[&user]).await?;
        }
        transaction.commit().await?;
        let Some(row) = row else {
            return Err(problems::erased());
        };
        let bytes: Vec<u8> = row.get(0);
        let key = DataKey::from_bytes(&bytes)
            .ok_or_else(|| Problem::internal(&"a stored data key is not 32 bytes"))?;
        let mut held = self.held();
        if held.len() >= REMEMBERED_KEYS {
            held.clear();
        }
        held.insert(user, key.clone());
        Ok(key)
    }

    /// Forgets the key this instance remembers for `user` (an erased user, whose key is gone).
    pub(crate) fn forget(&self, user: Uuid) {
        self.held().remove(&user);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, DataKey>> {
        // A panic while it was held leaves a map of keys: still usable.
        self.remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
