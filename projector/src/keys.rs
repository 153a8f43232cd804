//! The data keys that open the sealed personal fields of events ([`chronicle_events::personal`]).
//!
//! The command API keeps one key per user in `command.data_keys`; the projector reads them in the
//! transaction of the batch that needs them, and remembers them (a key never changes) up to
//! [`REMEMBERED_KEYS`], process-wide, until the user is erased.
//!
//! A key that is not there was destroyed by an erasure, or never known here. The command API
//! tells the two apart in `command.erasures`: the sealed fields of an erased user are forgotten
//! (they read as empty) and their events still apply, to be undone or kept inert by the
//! erasure (see `projection/erase.rs`); an event whose key is unknown cannot be applied and is
//! set aside as a dead letter, with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use chronicle_events::{DataKey, Envelope};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Keys the process remembers at most; past that it forgets them all.
const REMEMBERED_KEYS: usize = 100_000;

fn remembered() -> std::sync::MutexGuard<'static, HashMap<Uuid, DataKey>> {
    static KEYS: OnceLock<Mutex<HashMap<Uuid, DataKey>>> = OnceLock::new();
    // A panic while it was held leaves a map of keys: still usable.
    KEYS.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// What opens the sealed fields of some events.
#[derive(Default)]
pub(crate) struct Keys {
    /// The keys, by owner.
    found: HashMap<Uuid, DataKey>,
    /// Owners without a key because they were erased.
    erased: HashSet<Uuid>,
}

/// Forgets `user`'s key, destroyed by their erasure.
pub(crate) fn forget(user: Uuid) {
    remembered().remove(&user);
}

/// The keys that open the sealed fields of `envelopes`: from memory, else read through
/// `client`, with the owners whose key is gone because they were erased.
pub(crate) async fn for_envelopes<'a>(
    client: &impl GenericClient,
    envelopes: impl Iterator<Item = &'a Envelope>,
) -> Result<Keys, tokio_postgres::Error> {
    let mut found = HashMap::new();
    let mut missing = Vec::new();
    {
        let held = remembered();
        for owner in envelopes.flat_map(|envelope| envelope.event.sealed_by()) {
            match held.get(&owner) {
                Some(key) => {
                    found.insert(owner, key.clone());
                }
                None => missing.push(owner),
            }
        }
    }
    if missing.is_empty() {
        return Ok(Keys {
            found,
            erased: HashSet::new(),
        });
    }
    missing.sort_unstable();
    missing.dedup();
    let rows = client
        .query(
            "SELECT user_id, data_key FROM command.data_keys WHERE user_id = ANY($1)",
            &[&missing],
        )
        .await?;
    {
        let mut held = remembered();
        if held.len() + rows.len() > REMEMBERED_KEYS {
            held.clear();
        }
        for row in rows {
            let bytes: Vec<u8> = row.get(1);
            // A stored key of another length opens nothing; its events are set aside.
            if let Some(key) = DataKey::from_bytes(&bytes) {
                held.insert(row.get(0), key.clone());
                found.insert(row.get(0), key);
            }
        }
    }
    missing.retain(|owner| !found.contains_key(owner));
    // `command.erasures` comes with the command API that erases (its migration 0006): until it
    // is there, nobody was erased, and a missing key is unknown.
    let recorded = !missing.is_empty()
        && client
            .query_one("SELECT to_regclass('command.erasures') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
    let erased = if recorded {
        client
            .query(
                "SELECT user_id FROM command.erasures WHERE user_id = ANY($1)",
                &[&missing],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect()
    } else {
        HashSet::new()
    };
    Ok(Keys { found, erased })
}

/// Opens the sealed fields of `envelope` with `keys` (forgetting those of erased users), or
/// says why it cannot.
pub(crate) fn open(envelope: &mut Envelope, keys: &Keys) -> Result<(), String> {
    for owner in envelope.event.sealed_by() {
        if keys.erased.contains(&owner) {
            envelope.event.forget_sealed_by(owner);
        }
    }
    envelope
        .event
        .open_personal(&|owner| keys.found.get(&owner).cloned())
        .map_err(|err| format!("cannot open a sealed field: {err}"))
}
