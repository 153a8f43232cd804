//! The envelope around every event, and its JSON encoding.
//!
//! On the wire an envelope is one JSON object:
//!
//! ```json
//! {"event_id": "…", "type": "PostLiked", "schema_version": 1,
//!  "occurred_at": "2026-11-26T09:30:00.123Z", "actor": "…", "aggregate_id": "…",
//!  "data": {"post_id": "…", "user_id": "…"}}
//! ```
//!
//! Decoding reads the envelope first and the payload second, so that an error can say exactly
//! what is wrong (an unknown type, a version this build cannot read, a missing payload field).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, EventKind};

/// An event together with the facts every event has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this event (UUIDv7).
    pub event_id: Uuid,
    /// When the command that caused it was accepted, in UTC, to the millisecond.
    pub occurred_at: DateTime<Utc>,
    /// The authenticated user who caused it.
    pub actor: Uuid,
    /// What happened.
    pub event: Event,
}

/// Why bytes could not be read as an [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON without the envelope's fields.
    #[error("not a valid event envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The `type` names no event this build knows.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The payload is written in a schema version this build cannot read.
    #[error("{event_type} has schema version {version}, this build reads versions 1..={current}")]
    UnsupportedVersion {
        /// The event's type.
        event_type: &'static str,
        /// The version found in the envelope.
        version: u32,
        /// The newest version this build reads.
        current: u32,
    },
    /// No upcaster could bring the payload to the current version.
    #[error("cannot upgrade {event_type} v{version}: {reason}")]
    Upcast {
        /// The event's type.
        event_type: &'static str,
        /// The version found in the envelope.
        version: u32,
        /// What went wrong.
        reason: String,
    },
    /// The payload does not match the schema of its type and version.
    #[error("invalid {event_type} v{version} payload: {source}")]
    Payload {
        /// The event's type.
        event_type: &'static str,
        /// The version found in the envelope.
        version: u32,
        /// What serde found wrong (names the field).
        #[source]
        source: serde_json::Error,
    },
    /// The envelope's aggregate id is not the one its payload implies.
    #[error("{event_type} has aggregate_id {found}, but its payload belongs to {expected}")]
    AggregateMismatch {
        /// The event's type.
        event_type: &'static str,
        /// The aggregate id in the envelope.
        found: Uuid,
        /// The aggregate id the payload implies.
        expected: Uuid,
    },
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    #[serde(with = "millis")]
    occurred_at: DateTime<Utc>,
    actor: Uuid,
    aggregate_id: Uuid,
    data: serde_json::Value,
}

impl Envelope {
    /// Wraps `event`, caused by `actor`, happening now, with a fresh UUIDv7 as its id.
    pub fn new(actor: Uuid, event: Event) -> Envelope {
        Envelope::at(Utc::now(), actor, event)
    }

    /// Wraps `event` as having happened at `occurred_at` (truncated to the millisecond).
    pub fn at(occurred_at: DateTime<Utc>, actor: Uuid, event: Event) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            occurred_at: occurred_at.trunc_subsecs(3),
            actor,
            event,
        }
    }

    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        self.event.kind()
    }

    /// The aggregate id, which is also the Kafka message key.
    pub fn aggregate_id(&self) -> Uuid {
        self.event.aggregate_id()
    }

    /// The JSON encoding of this envelope.
    pub fn to_json(&self) -> Vec<u8> {
        let kind = self.kind();
        let wire = WireEnvelope {
            event_id: self.event_id,
            event_type: kind.name().to_owned(),
            schema_version: kind.current_version(),
            occurred_at: self.occurred_at,
            actor: self.actor,
            aggregate_id: self.aggregate_id(),
            data: self.event.data(),
        };
        // A struct of UUIDs, strings and a `Value` always serialises.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Reads an envelope from its JSON encoding.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let wire: WireEnvelope = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        let kind = EventKind::from_name(&wire.event_type)
            .ok_or_else(|| DecodeError::UnknownType(wire.event_type.clone()))?;
        let current = kind.current_version();
        if wire.schema_version == 0 || wire.schema_version > current {
            return Err(DecodeError::UnsupportedVersion {
                event_type: kind.name(),
                version: wire.schema_version,
                current,
            });
        }
        let data =
            crate::upcast::to_current(kind, wire.schema_version, wire.data).map_err(|reason| {
                DecodeError::Upcast {
                    event_type: kind.name(),
                    version: wire.schema_version,
                    reason,
                }
            })?;
        let event = Event::from_data(kind, data).map_err(|source| DecodeError::Payload {
            event_type: kind.name(),
            version: wire.schema_version,
            source,
        })?;
        if event.aggregate_id() != wire.aggregate_id {
            return Err(DecodeError::AggregateMismatch {
                event_type: kind.name(),
                found: wire.aggregate_id,
                expected: event.aggregate_id(),
            });
        }
        Ok(Envelope {
            event_id: wire.event_id,
            occurred_at: wire.occurred_at,
            actor: wire.actor,
            event,
        })
    }
}

/// RFC 3339 in UTC with exactly three fractional digits, as everywhere in Chronicle.
mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use serde_json::json;

    fn ids() -> (Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7())
    }

    fn every_event() -> Vec<Event> {
        let (a, b) = ids();
        vec![
            Event::UserRegistered(UserRegistered {
                user_id: a,
                handle: "alice".into(),
                display_name: "Alice Ö 🦀".into(),
                bio: "likes \"quotes\" and 'apostrophes'".into(),
            }),
            Event::ProfileUpdated(ProfileUpdated {
                user_id: a,
                display_name: Some("Alice".into()),
                bio: None,
            }),
            Event::ProfileUpdated(ProfileUpdated {
                user_id: a,
                display_name: None,
                bio: Some(String::new().into()),
            }),
            Event::PostPublished(PostPublished {
                post_id: b,
                author_id: a,
                body: "hello\nworld".into(),
                reply_to: None,
            }),
            Event::PostPublished(PostPublished {
                post_id: b,
                author_id: a,
                body: "a reply".into(),
                reply_to: Some(a),
            }),
            Event::PostDeleted(PostDeleted {
                post_id: b,
                author_id: a,
            }),
            Event::PostLiked(PostLiked {
                post_id: b,
                user_id: a,
            }),
            Event::PostUnliked(PostUnliked {
                post_id: b,
                user_id: a,
            }),
            Event::UserFollowed(UserFollowed {
                follower_id: a,
                followee_id: b,
            }),
            Event::UserUnfollowed(UserUnfollowed {
                follower_id: a,
                followee_id: b,
            }),
            Event::NotificationsRead(NotificationsRead {
                user_id: a,
                up_to: b,
            }),
            Event::UserErased(UserErased { user_id: a }),
        ]
    }

    #[test]
    fn every_event_type_round_trips_through_json() {
        let events = every_event();
        let kinds: std::collections::HashSet<_> = events.iter().map(Event::kind).collect();
        assert_eq!(
            kinds.len(),
            EventKind::ALL.len(),
            "a kind is missing from the test"
        );
        for event in events {
            let envelope = Envelope::new(Uuid::now_v7(), event);
            let decoded = Envelope::from_json(&envelope.to_json()).expect("decodes");
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let user = Uuid::parse_str("0190d0a0-0000-7000-8000-000000000001").expect("uuid");
        let post = Uuid::parse_str("0190d0a0-0000-7000-8000-000000000002").expect("uuid");
        let at = DateTime::parse_from_rfc3339("2026-11-26T09:30:00.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut envelope = Envelope::at(
            at,
            user,
            Event::PostLiked(PostLiked {
                post_id: post,
                user_id: user,
            }),
        );
        envelope.event_id = Uuid::parse_str("0190d0a0-0000-7000-8000-0000000000ff").expect("id");
        let value: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("json");
        assert_eq!(
            value,
            json!({
                "event_id": "0190d0a0-0000-7000-8000-0000000000ff",
                "type": "PostLiked",
                "schema_version": 1,
                "occurred_at": "2026-11-26T09:30:00.123Z",
                "actor": user,
                "aggregate_id": post,
                "data": {"post_id": post, "user_id": user},
            })
        );
    }

    #[test]
    fn aggregate_is_the_post_for_post_events_and_the_actor_for_user_events() {
        let (user, post) = ids();
        let like = Event::PostLiked(PostLiked {
            post_id: post,
            user_id: user,
        });
        assert_eq!(like.aggregate_id(), post);
        let follow = Event::UserFollowed(UserFollowed {
            follower_id: user,
            followee_id: post,
        });
        assert_eq!(follow.aggregate_id(), user);
    }

    fn decode_error(value: serde_json::Value) -> String {
        let bytes = serde_json::to_vec(&value).expect("json");
        Envelope::from_json(&bytes)
            .expect_err("must not decode")
            .to_string()
    }

    fn liked(data: serde_json::Value) -> serde_json::Value {
        let (user, post) = ids();
        json!({
            "event_id": Uuid::now_v7(), "type": "PostLiked", "schema_version": 1,
            "occurred_at": "2026-11-26T09:30:00.123Z", "actor": user, "aggregate_id": post,
            "data": data,
        })
    }

    #[test]
    fn garbage_is_not_an_envelope() {
        let err = Envelope::from_json(b"\x00\xffnot json").expect_err("garbage");
        assert!(matches!(err, DecodeError::Envelope(_)), "{err}");
        let err = decode_error(json!({"type": "PostLiked"}));
        assert!(err.contains("missing field `event_id`"), "{err}");
    }

    #[test]
    fn unknown_type_is_named() {
        let mut value = liked(json!({}));
        value["type"] = json!("PostShared");
        assert_eq!(decode_error(value), "unknown event type `PostShared`");
    }

    #[test]
    fn future_version_is_refused_with_both_versions() {
        let mut value = liked(json!({}));
        value["schema_version"] = json!(7);
        assert_eq!(
            decode_error(value),
            "PostLiked has schema version 7, this build reads versions 1..=1"
        );
    }

    #[test]
    fn missing_payload_field_is_named() {
        let err = decode_error(liked(json!({"post_id": Uuid::now_v7()})));
        assert!(err.starts_with("invalid PostLiked v1 payload"), "{err}");
        assert!(err.contains("missing field `user_id`"), "{err}");
    }

    #[test]
    fn aggregate_must_match_payload() {
        let value = liked(json!({"post_id": Uuid::now_v7(), "user_id": Uuid::now_v7()}));
        let err = decode_error(value);
        assert!(err.contains("PostLiked has aggregate_id"), "{err}");
    }

    #[test]
    fn occurred_at_is_truncated_to_milliseconds() {
        let envelope = Envelope::new(Uuid::now_v7(), every_event().remove(0));
        assert_eq!(envelope.occurred_at.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
