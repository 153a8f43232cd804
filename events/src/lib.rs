//! The event vocabulary of Chronicle.
//!
//! Every change in Chronicle is one of the [`Event`]s below, wrapped in an [`Envelope`] that says
//! who did it, when, to which aggregate, and in which schema version the payload is written.
//! Envelopes travel through Kafka as JSON ([`Envelope::to_json`], [`Envelope::from_json`]).
//! Personal fields travel sealed under their user's data key ([`personal`]), so that destroying
//! the key erases them from every copy of the log.
//!
//! This crate owns the vocabulary and its encoding only. It never does I/O: the command side
//! produces these events, the projector folds them into read models, and both depend on this
//! crate for the one shared definition of what an event is.

mod envelope;
mod event;
pub mod fixtures;
pub mod personal;
mod upcast;

pub use envelope::{DecodeError, Envelope};
pub use event::{
    Event, EventKind, NotificationsRead, PostDeleted, PostLiked, PostPublished, PostUnliked,
    ProfileUpdated, UserErased, UserFollowed, UserRegistered, UserUnfollowed,
};
pub use personal::{DataKey, OpenError, Text};
