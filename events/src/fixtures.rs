//! Every checked-in fixture (`fixtures/v<N>/<Type>.json`) decodes through the current upcasters.

/// Every fixture: (path, JSON).
pub const FIXTURES: &[(&str, &str)] = &[
    (
        "v1/UserRegistered.json",
        include_str!("../fixtures/v1/UserRegistered.json"),
    ),
    (
        "v1/ProfileUpdated.json",
        include_str!("../fixtures/v1/ProfileUpdated.json"),
    ),
    (
        "v1/PostPublished.json",
        include_str!("../fixtures/v1/PostPublished.json"),
    ),
    (
        "v1/PostDeleted.json",
        include_str!("../fixtures/v1/PostDeleted.json"),
    ),
    (
        "v1/PostLiked.json",
        include_str!("../fixtures/v1/PostLiked.json"),
    ),
    (
        "v1/PostUnliked.json",
        include_str!("../fixtures/v1/PostUnliked.json"),
    ),
    (
        "v1/UserFollowed.json",
        include_str!("../fixtures/v1/UserFollowed.json"),
    ),
    (
        "v1/UserUnfollowed.json",
        include_str!("../fixtures/v1/UserUnfollowed.json"),
    ),
    (
        "v1/NotificationsRead.json",
        include_str!("../fixtures/v1/NotificationsRead.json"),
    ),
    (
        "v1/UserErased.json",
        include_str!("../fixtures/v1/UserErased.json"),
    ),
    (
        "v2/PostPublished.json",
        include_str!("../fixtures/v2/PostPublished.json"),
    ),
    (
        "v2/UserRegistered.json",
        include_str!("../fixtures/v2/UserRegistered.json"),
    ),
    (
        "v2/ProfileUpdated.json",
        include_str!("../fixtures/v2/ProfileUpdated.json"),
    ),
    (
        "v3/PostPublished.json",
        include_str!("../fixtures/v3/PostPublished.json"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataKey, Envelope, Event, EventKind, OpenError};
    use uuid::Uuid;

    fn uuid(text: &str) -> Uuid {
        Uuid::parse_str(text).expect("uuid")
    }

    #[test]
    fn every_fixture_decodes() {
        for (path, json) in FIXTURES {
            let envelope = Envelope::from_json(json.as_bytes())
                .unwrap_or_else(|err| panic!("{path} no longer decodes: {err}"));
            assert!(
                path.ends_with(&format!("{}.json", envelope.kind().name())),
                "{path}"
            );
        }
    }

    #[test]
    fn there_is_a_v1_fixture_of_every_type() {
        for kind in EventKind::ALL {
            let path = format!("v1/{}.json", kind.name());
            assert!(
                FIXTURES.iter().any(|(p, _)| *p == path),
                "{path} is missing"
            );
        }
    }

    #[test]
    fn a_v1_post_becomes_a_v2_post_that_replies_to_nothing() {
        let (_, json) = FIXTURES[2];
        let envelope = Envelope::from_json(json.as_bytes()).expect("decodes");
        let Event::PostPublished(post) = envelope.event else {
            panic!("not a post");
        };
        assert_eq!(post.reply_to, None);
        assert_eq!(post.body, "Hello, Chronicle!");
        // Written again, it is written in the current version.
        let rewritten: serde_json::Value = serde_json::from_slice(
            &Envelope::from_json(json.as_bytes())
                .expect("decodes")
                .to_json(),
        )
        .expect("json");
        assert_eq!(rewritten["schema_version"], 3);
    }

    #[test]
    fn a_v2_post_keeps_its_parent() {
        let (_, json) = FIXTURES[10];
        let Event::PostPublished(post) =
            Envelope::from_json(json.as_bytes()).expect("decodes").event
        else {
            panic!("not a post");
        };
        assert_eq!(
            post.reply_to,
            Some(uuid("0190d0a0-0000-7000-8000-0000000000a0"))
        );
    }

    /// The fixture at `path`, decoded.
    fn fixture(path: &str) -> Envelope {
        let (_, json) = FIXTURES
            .iter()
            .find(|(p, _)| *p == path)
            .unwrap_or_else(|| panic!("no fixture {path}"));
        Envelope::from_json(json.as_bytes()).expect("decodes")
    }

    #[test]
    fn sealed_fixtures_open_with_their_key_and_say_nothing_without_it() {
        let owner = uuid("0190d0a0-0000-7000-8000-000000000001");
        let key = DataKey::from_bytes(&[7; 32]).expect("the fixtures' key");
        let key_of = |who: Uuid| (who == owner).then(|| key.clone());
        for (path, json) in FIXTURES.iter().filter(|(_, json)| json.contains("A256GCM")) {
            for plain in ["alice", "Alice", "Writes", "sealed reply"] {
                assert!(!json.contains(plain), "{path} shows {plain:?}");
            }
            let mut envelope = fixture(path);
            assert_eq!(envelope.event.sealed_by(), vec![owner], "{path}");
            let mut shredded = envelope.event.clone();
            assert_eq!(
                shredded.open_personal(&|_| None),
                Err(OpenError::NoKey(owner)),
                "{path}"
            );
            envelope.event.open_personal(&key_of).expect("opens");
            assert!(envelope.event.sealed_by().is_empty(), "{path}");
        }
        let Event::UserRegistered(user) = open(&fixture("v2/UserRegistered.json"), &key_of) else {
            panic!("not a registration");
        };
        assert_eq!(
            (user.handle, user.display_name, user.bio),
            ("alice".into(), "Alice".into(), "Writes about logs.".into())
        );
        let Event::ProfileUpdated(update) = open(&fixture("v2/ProfileUpdated.json"), &key_of)
        else {
            panic!("not a profile update");
        };
        assert_eq!(update.display_name, Some("Alice A.".into()));
        assert_eq!(update.bio, None);
        let Event::PostPublished(post) = open(&fixture("v3/PostPublished.json"), &key_of) else {
            panic!("not a post");
        };
        assert_eq!(post.body, "A sealed reply.");
        assert_eq!(
            post.reply_to,
            Some(uuid("0190d0a0-0000-7000-8000-0000000000a0"))
        );
    }

    fn open(envelope: &Envelope, key_of: &impl Fn(Uuid) -> Option<DataKey>) -> Event {
        let mut event = envelope.event.clone();
        event.open_personal(key_of).expect("opens");
        event
    }
}
