//! The data keys that open the sealed personal fields of events ([`chronicle_events::personal`]).
//!
//! The command API keeps one key per user in `command.data_keys`; the projector reads them in the
//! transaction of the batch that needs them, and remembers them (a key never changes) up to
//! [`REMEMBERED_KEYS`], process-wide. An event whose key is not there cannot be applied: it is
//! set aside as a dead letter, with the reason.

use std::collections::HashMap;
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

/// The keys that open the sealed fields of `envelopes`: from memory, else read through
/// `client`. An owner whose key is not stored is missing from the answer.
pub(crate) async fn for_envelopes<'a>(
    client: &impl GenericClient,
    envelopes: impl Iterator<Item = &'a Envelope>,
) -> Result<HashMap<Uuid, DataKey>, tokio_postgres::Error> {
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
        return Ok(found);
    }
    missing.sort_unstable();
    missing.dedup();
    let rows = client
        .query(
            "SELECT user_id, data_key FROM command.data_keys WHERE user_id = ANY($1)",
            &[&missing],
        )
        .await?;
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
    Ok(found)
}

/// Opens the sealed fields of `envelope` with `keys`, or says why it cannot.
pub(crate) fn open(envelope: &mut Envelope, keys: &HashMap<Uuid, DataKey>) -> Result<(), String> {
    envelope
        .event
        .open_personal(&|owner| keys.get(&owner).cloned())
        .map_err(|err| format!("cannot open a sealed field: {err}"))
}
