//! Upcasters: how a payload written in an older schema version becomes the current one.
//!
//! History is never edited. An event stays in the log in the version it was written in, and
//! every read runs it through the chain below, one step per version, up to the kind's current
//! version. A new version adds one step here and one fixture under `fixtures/`; old steps are
//! never changed, so every event ever written keeps decoding.

use serde_json::Value;

use crate::event::EventKind;

/// One step: turns a payload of `kind` at `from` into version `from + 1`.
fn step(kind: EventKind, from: u32, mut data: Value) -> Result<Value, String> {
    match (kind, from) {
        // v2 (replies): a post may answer another post. Posts written before are not replies.
        (EventKind::PostPublished, 1) => {
            let object = data
                .as_object_mut()
                .ok_or_else(|| "the payload is not a JSON object".to_owned())?;
            object.entry("reply_to").or_insert(Value::Null);
            Ok(data)
        }
        // Sealed personal fields (UserRegistered v2, ProfileUpdated v2, PostPublished v3): a
        // field may now be a sealed object; a plaintext string is still a valid field.
        (EventKind::UserRegistered | EventKind::ProfileUpdated, 1)
        | (EventKind::PostPublished, 2) => Ok(data),
        (kind, from) => Err(format!(
            "no upcaster from {} v{from} to v{}",
            kind.name(),
            from + 1
        )),
    }
}

/// Upgrades `data`, written as `kind` in schema `version`, to the kind's current version.
pub(crate) fn to_current(kind: EventKind, version: u32, data: Value) -> Result<Value, String> {
    (version..kind.current_version()).try_fold(data, |data, from| step(kind, from, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_older_version_has_a_path_to_the_current_one() {
        for kind in EventKind::ALL {
            for version in 1..kind.current_version() {
                // Each step must at least accept an object; the fixtures test real payloads.
                assert!(
                    to_current(kind, version, json!({})).is_ok(),
                    "{} v{version} has no upcaster",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn a_v1_post_is_not_a_reply() {
        let v1 = json!({"post_id": "p", "author_id": "a", "body": "hi"});
        let current = to_current(EventKind::PostPublished, 1, v1).expect("upcasts");
        assert_eq!(current["reply_to"], Value::Null);
        assert_eq!(current["body"], "hi");
    }

    #[test]
    fn the_current_version_passes_through() {
        let data = json!({"post_id": "p", "user_id": "u"});
        assert_eq!(
            to_current(EventKind::PostLiked, 1, data.clone()).expect("no-op"),
            data
        );
    }
}
