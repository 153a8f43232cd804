//! The things that can happen in Chronicle, one payload type each.
//!
//! Payloads carry the facts a projection needs, so projections stay free of logic: a like names
//! the post and the user, a deletion names the author. Names are past tense: events record what
//! happened, they never ask for something to happen.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::personal::{DataKey, OpenError, Text};

/// A person joined Chronicle and reserved a handle (schema v2: personal fields may be sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// The new user's id (UUIDv7, made by the command side).
    pub user_id: Uuid,
    /// The normalised (trimmed, lowercased) handle, unique across users. Personal.
    pub handle: Text,
    /// The name shown next to the handle. Personal.
    pub display_name: Text,
    /// A short self-description; empty when none was given. Personal.
    #[serde(default)]
    pub bio: Text,
}

/// A user changed their display name and/or bio. `None` leaves a field as it was (schema v2:
/// personal fields may be sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    /// The user whose profile changed.
    pub user_id: Uuid,
    /// The new display name, if it changed. Personal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Text>,
    /// The new bio, if it changed (an empty string clears it). Personal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<Text>,
}

/// A user published a post, possibly as a reply to another post (schema v3; v2 added replies,
/// v3 allows a sealed body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostPublished {
    /// The new post's id (UUIDv7, made by the command side).
    pub post_id: Uuid,
    /// The author.
    pub author_id: Uuid,
    /// The text of the post, trimmed. Personal.
    pub body: Text,
    /// The post this one replies to, if any.
    pub reply_to: Option<Uuid>,
}

/// The author deleted their post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostDeleted {
    /// The deleted post.
    pub post_id: Uuid,
    /// Its author (who is also the actor).
    pub author_id: Uuid,
}

/// A user liked a post. Liking a post twice is one like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostLiked {
    /// The liked post.
    pub post_id: Uuid,
    /// The user who liked it.
    pub user_id: Uuid,
}

/// A user took back their like. Unliking a post that is not liked changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostUnliked {
    /// The post.
    pub post_id: Uuid,
    /// The user who no longer likes it.
    pub user_id: Uuid,
}

/// `follower_id` started following `followee_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFollowed {
    /// The user who follows (the actor).
    pub follower_id: Uuid,
    /// The user being followed.
    pub followee_id: Uuid,
}

/// `follower_id` stopped following `followee_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUnfollowed {
    /// The user who no longer follows (the actor).
    pub follower_id: Uuid,
    /// The user no longer followed.
    pub followee_id: Uuid,
}

/// A user marked a notification and every older one (by id) read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsRead {
    /// The user whose notifications were read (the actor).
    pub user_id: Uuid,
    /// The newest notification read: it and every notification with a smaller id are read.
    pub up_to: Uuid,
}

/// A user asked to be erased (GDPR's right to erasure). Their data key is destroyed with it, so
/// the personal fields of every event they caused can no longer be read from the log; the read
/// models forget them: their profile, posts, likes, follows and notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserErased {
    /// The erased user (who is also the actor).
    pub user_id: Uuid,
}

/// Any Chronicle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// See [`UserRegistered`].
    UserRegistered(UserRegistered),
    /// See [`ProfileUpdated`].
    ProfileUpdated(ProfileUpdated),
    /// See [`PostPublished`].
    PostPublished(PostPublished),
    /// See [`PostDeleted`].
    PostDeleted(PostDeleted),
    /// See [`PostLiked`].
    PostLiked(PostLiked),
    /// See [`PostUnliked`].
    PostUnliked(PostUnliked),
    /// See [`UserFollowed`].
    UserFollowed(UserFollowed),
    /// See [`UserUnfollowed`].
    UserUnfollowed(UserUnfollowed),
    /// See [`NotificationsRead`].
    NotificationsRead(NotificationsRead),
    /// See [`UserErased`].
    UserErased(UserErased),
}

/// The type of an event without its payload: its wire name and current schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `UserRegistered`
    UserRegistered,
    /// `ProfileUpdated`
    ProfileUpdated,
    /// `PostPublished`
    PostPublished,
    /// `PostDeleted`
    PostDeleted,
    /// `PostLiked`
    PostLiked,
    /// `PostUnliked`
    PostUnliked,
    /// `UserFollowed`
    UserFollowed,
    /// `UserUnfollowed`
    UserUnfollowed,
    /// `NotificationsRead`
    NotificationsRead,
    /// `UserErased`
    UserErased,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 10] = [
        EventKind::UserRegistered,
        EventKind::ProfileUpdated,
        EventKind::PostPublished,
        EventKind::PostDeleted,
        EventKind::PostLiked,
        EventKind::PostUnliked,
        EventKind::UserFollowed,
        EventKind::UserUnfollowed,
        EventKind::NotificationsRead,
        EventKind::UserErased,
    ];

    /// The name written in the envelope's `type` field and the `ce_type` header.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::UserRegistered => "UserRegistered",
            EventKind::ProfileUpdated => "ProfileUpdated",
            EventKind::PostPublished => "PostPublished",
            EventKind::PostDeleted => "PostDeleted",
            EventKind::PostLiked => "PostLiked",
            EventKind::PostUnliked => "PostUnliked",
            EventKind::UserFollowed => "UserFollowed",
            EventKind::UserUnfollowed => "UserUnfollowed",
            EventKind::NotificationsRead => "NotificationsRead",
            EventKind::UserErased => "UserErased",
        }
    }

    /// The kind with the given wire name, if there is one.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The schema version new events of this kind are written in. Older versions are read
    /// through the upcasters in `upcast.rs`.
    pub fn current_version(self) -> u32 {
        match self {
            // v2: `reply_to`; v3: a sealed body.
            EventKind::PostPublished => 3,
            // v2: sealed personal fields.
            EventKind::UserRegistered | EventKind::ProfileUpdated => 2,
            _ => 1,
        }
    }
}

impl Event {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::UserRegistered(_) => EventKind::UserRegistered,
            Event::ProfileUpdated(_) => EventKind::ProfileUpdated,
            Event::PostPublished(_) => EventKind::PostPublished,
            Event::PostDeleted(_) => EventKind::PostDeleted,
            Event::PostLiked(_) => EventKind::PostLiked,
            Event::PostUnliked(_) => EventKind::PostUnliked,
            Event::UserFollowed(_) => EventKind::UserFollowed,
            Event::UserUnfollowed(_) => EventKind::UserUnfollowed,
            Event::NotificationsRead(_) => EventKind::NotificationsRead,
            Event::UserErased(_) => EventKind::UserErased,
        }
    }

    /// The aggregate the event belongs to, which is also its Kafka message key: the post for
    /// post events (likes included), the user for user events (follows belong to the follower).
    /// Events of one aggregate are therefore totally ordered in the log.
    pub fn aggregate_id(&self) -> Uuid {
        match self {
            Event::UserRegistered(e) => e.user_id,
            Event::ProfileUpdated(e) => e.user_id,
            Event::PostPublished(e) => e.post_id,
            Event::PostDeleted(e) => e.post_id,
            Event::PostLiked(e) => e.post_id,
            Event::PostUnliked(e) => e.post_id,
            Event::UserFollowed(e) => e.follower_id,
            Event::UserUnfollowed(e) => e.follower_id,
            Event::NotificationsRead(e) => e.user_id,
            Event::UserErased(e) => e.user_id,
        }
    }

    /// The user whose data key seals this event's personal fields, if it has any.
    pub fn personal_owner(&self) -> Option<Uuid> {
        match self {
            Event::UserRegistered(e) => Some(e.user_id),
            Event::ProfileUpdated(e) => Some(e.user_id),
            Event::PostPublished(e) => Some(e.author_id),
            _ => None,
        }
    }

    /// The personal fields, by name.
    fn personal_mut(&mut self) -> Vec<(&'static str, &mut Text)> {
        match self {
            Event::UserRegistered(e) => vec![
                ("handle", &mut e.handle),
                ("display_name", &mut e.display_name),
                ("bio", &mut e.bio),
            ],
            Event::ProfileUpdated(e) => [
                e.display_name.as_mut().map(|text| ("display_name", text)),
                e.bio.as_mut().map(|text| ("bio", text)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Event::PostPublished(e) => vec![("body", &mut e.body)],
            _ => Vec::new(),
        }
    }

    /// Seals every personal field under `key`, the data key of [`Event::personal_owner`].
    pub fn seal_personal(&mut self, key: &DataKey) {
        let Some(owner) = self.personal_owner() else {
            return;
        };
        for (field, text) in self.personal_mut() {
            text.seal(field, owner, key);
        }
    }

    /// The owners of the keys that open this event's sealed fields (none when nothing is
    /// sealed).
    pub fn sealed_by(&self) -> Vec<Uuid> {
        let texts: Vec<&Text> = match self {
            Event::UserRegistered(e) => vec![&e.handle, &e.display_name, &e.bio],
            Event::ProfileUpdated(e) => e.display_name.iter().chain(&e.bio).collect(),
            Event::PostPublished(e) => vec![&e.body],
            _ => Vec::new(),
        };
        let mut owners: Vec<Uuid> = texts.into_iter().filter_map(Text::sealed_by).collect();
        owners.sort_unstable();
        owners.dedup();
        owners
    }

    /// Opens every sealed personal field with the keys `key_of` gives. On an error some fields
    /// may be open and others not.
    pub fn open_personal(
        &mut self,
        key_of: &impl Fn(Uuid) -> Option<DataKey>,
    ) -> Result<(), OpenError> {
        for (field, text) in self.personal_mut() {
            text.open(field, key_of)?;
        }
        Ok(())
    }

    /// Forgets every sealed field of `owner`: each becomes an empty text. For the events of an
    /// erased user, whose key is destroyed; what they say of others still applies (and is then
    /// undone by the erasure).
    pub fn forget_sealed_by(&mut self, owner: Uuid) {
        for (_, text) in self.personal_mut() {
            if text.sealed_by() == Some(owner) {
                *text = Text::default();
            }
        }
    }

    /// The payload as a JSON value, in the kind's current schema version.
    pub(crate) fn data(&self) -> serde_json::Value {
        let value = match self {
            Event::UserRegistered(e) => serde_json::to_value(e),
            Event::ProfileUpdated(e) => serde_json::to_value(e),
            Event::PostPublished(e) => serde_json::to_value(e),
            Event::PostDeleted(e) => serde_json::to_value(e),
            Event::PostLiked(e) => serde_json::to_value(e),
            Event::PostUnliked(e) => serde_json::to_value(e),
            Event::UserFollowed(e) => serde_json::to_value(e),
            Event::UserUnfollowed(e) => serde_json::to_value(e),
            Event::NotificationsRead(e) => serde_json::to_value(e),
            Event::UserErased(e) => serde_json::to_value(e),
        };
        // Serialising these plain structs of strings and UUIDs into a `Value` cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Reads a payload written in the kind's current schema version.
    pub(crate) fn from_data(
        kind: EventKind,
        data: serde_json::Value,
    ) -> Result<Event, serde_json::Error> {
        use serde_json::from_value;
        Ok(match kind {
            EventKind::UserRegistered => Event::UserRegistered(from_value(data)?),
            EventKind::ProfileUpdated => Event::ProfileUpdated(from_value(data)?),
            EventKind::PostPublished => Event::PostPublished(from_value(data)?),
            EventKind::PostDeleted => Event::PostDeleted(from_value(data)?),
            EventKind::PostLiked => Event::PostLiked(from_value(data)?),
            EventKind::PostUnliked => Event::PostUnliked(from_value(data)?),
            EventKind::UserFollowed => Event::UserFollowed(from_value(data)?),
            EventKind::UserUnfollowed => Event::UserUnfollowed(from_value(data)?),
            EventKind::NotificationsRead => Event::NotificationsRead(from_value(data)?),
            EventKind::UserErased => Event::UserErased(from_value(data)?),
        })
    }
}
