//! The step planner: which events of a batch may be applied together.

use std::collections::HashMap;

use chronicle_events::{Envelope, Event};
use uuid::Uuid;

use super::step::Step;

/// A row, or a set of rows, that events read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Resource {
    /// A user's profile.
    User(Uuid),
    /// A post, together with all of its likes (a deletion removes them).
    Post(Uuid),
    /// One user's like of one post.
    Like(Uuid, Uuid),
    /// One follow edge.
    Follow(Uuid, Uuid),
    /// How far a user has read their notifications.
    Reads(Uuid),
}

/// What applying an event reads and writes. Counters are not rows here: they move by deltas,
/// which commute.
struct Touches {
    reads: Option<Resource>,
    writes: Resource,
}

fn touches(event: &Event) -> Touches {
    let write = |writes| Touches {
        reads: None,
        writes,
    };
    match event {
        Event::UserRegistered(e) => write(Resource::User(e.user_id)),
        Event::ProfileUpdated(e) => write(Resource::User(e.user_id)),
        Event::PostPublished(e) => write(Resource::Post(e.post_id)),
        Event::PostDeleted(e) => write(Resource::Post(e.post_id)),
        // A like needs the post's state: live or deleted.
        Event::PostLiked(e) => Touches {
            reads: Some(Resource::Post(e.post_id)),
            writes: Resource::Like(e.post_id, e.user_id),
        },
        Event::PostUnliked(e) => Touches {
            reads: Some(Resource::Post(e.post_id)),
            writes: Resource::Like(e.post_id, e.user_id),
        },
        Event::UserFollowed(e) => write(Resource::Follow(e.follower_id, e.followee_id)),
        Event::UserUnfollowed(e) => write(Resource::Follow(e.follower_id, e.followee_id)),
        Event::NotificationsRead(e) => write(Resource::Reads(e.user_id)),
        // Never looked at: an erasure is a barrier (see `step_numbers`).
        Event::UserErased(e) => write(Resource::User(e.user_id)),
    }
}

/// Cuts `events` into steps.
pub(super) fn plan<'a>(events: &[&'a Envelope]) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    for (envelope, step) in events.iter().zip(step_numbers(events)) {
        if steps.len() <= step {
            steps.resize_with(step + 1, Step::default);
        }
        steps[step].push(envelope);
    }
    steps
}

/// The step of each event: an event that writes a row goes after the last step that read or
/// wrote it; an event that reads a row goes after the last step that wrote it. An erasure
/// touches every row of its user, and of others through them (their likes, follows, replies):
/// it is a barrier, alone in a step after every earlier event, and every later event comes
/// after it. Erasures are rare; the batches that hold one are not the ones to make fast.
fn step_numbers(events: &[&Envelope]) -> Vec<usize> {
    /// Per row: 1 + the last step that wrote it, 1 + the last step that read it (0: none).
    #[derive(Default)]
    struct Seen {
        written: usize,
        read: usize,
    }
    let mut seen: HashMap<Resource, Seen> = HashMap::with_capacity(events.len());
    // The number of steps so far, and the first step a later event may take.
    let (mut steps, mut floor) = (0, 0);
    events
        .iter()
        .map(|envelope| {
            if let Event::UserErased(_) = envelope.event {
                let step = steps.max(floor);
                (steps, floor) = (step + 1, step + 1);
                return step;
            }
            let Touches { reads, writes } = touches(&envelope.event);
            let after_writes = seen.get(&writes).map_or(0, |s| s.written.max(s.read));
            let after_reads = reads
                .and_then(|row| seen.get(&row))
                .map_or(0, |s| s.written);
            let step = after_writes.max(after_reads).max(floor);
            steps = steps.max(step + 1);
            seen.entry(writes).or_default().written = step + 1;
            if let Some(row) = reads {
                let entry = seen.entry(row).or_default();
                entry.read = entry.read.max(step + 1);
            }
            step
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chronicle_events::{
        PostDeleted, PostLiked, PostPublished, PostUnliked, UserErased, UserFollowed,
    };
    use proptest::prelude::*;

    use super::*;

    fn envelope(event: Event) -> Envelope {
        Envelope::new(Uuid::now_v7(), event)
    }

    fn liked(post: Uuid, user: Uuid) -> Envelope {
        envelope(Event::PostLiked(PostLiked {
            post_id: post,
            user_id: user,
        }))
    }

    fn unliked(post: Uuid, user: Uuid) -> Envelope {
        envelope(Event::PostUnliked(PostUnliked {
            post_id: post,
            user_id: user,
        }))
    }

    fn published(post: Uuid) -> Envelope {
        envelope(Event::PostPublished(PostPublished {
            post_id: post,
            author_id: Uuid::now_v7(),
            body: "hello".into(),
            reply_to: None,
        }))
    }

    fn deleted(post: Uuid) -> Envelope {
        envelope(Event::PostDeleted(PostDeleted {
            post_id: post,
            author_id: Uuid::now_v7(),
        }))
    }

    fn steps_of(events: &[Envelope]) -> Vec<usize> {
        let refs: Vec<&Envelope> = events.iter().collect();
        step_numbers(&refs)
    }

    #[test]
    fn likes_of_one_post_by_different_users_share_a_step() {
        let post = Uuid::now_v7();
        let events: Vec<Envelope> = (0..5).map(|_| liked(post, Uuid::now_v7())).collect();
        assert_eq!(steps_of(&events), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_like_waits_for_the_post_and_an_unlike_for_the_like() {
        let (post, user) = (Uuid::now_v7(), Uuid::now_v7());
        let events = [
            published(post),
            liked(post, user),
            liked(post, Uuid::now_v7()),
            unliked(post, user),
            liked(post, user),
        ];
        assert_eq!(steps_of(&events), [0, 1, 1, 2, 3]);
    }

    #[test]
    fn a_deletion_waits_for_earlier_likes_and_later_likes_wait_for_it() {
        let post = Uuid::now_v7();
        let events = [
            liked(post, Uuid::now_v7()),
            deleted(post),
            liked(post, Uuid::now_v7()),
        ];
        assert_eq!(steps_of(&events), [0, 1, 2]);
    }

    fn erased(user: Uuid) -> Envelope {
        envelope(Event::UserErased(UserErased { user_id: user }))
    }

    #[test]
    fn an_erasure_comes_after_every_earlier_event_and_before_every_later_one() {
        let post = Uuid::now_v7();
        let events = [
            published(post),
            liked(post, Uuid::now_v7()),
            published(Uuid::now_v7()),
            erased(Uuid::now_v7()),
            published(Uuid::now_v7()),
            erased(Uuid::now_v7()),
            erased(Uuid::now_v7()),
            liked(Uuid::now_v7(), Uuid::now_v7()),
        ];
        assert_eq!(steps_of(&events), [0, 1, 0, 2, 3, 4, 5, 6]);
    }

    /// An event over a few users and posts, so that events often touch the same rows.
    fn any_event() -> impl Strategy<Value = Event> {
        let id = |n: u8| Uuid::from_u128(u128::from(n) + 1);
        (0u8..9, 0u8..4, 0u8..4).prop_map(move |(kind, a, b)| {
            let (user, other, post) = (id(a), id(b + 10), id(b + 20));
            match kind {
                0 => Event::PostPublished(PostPublished {
                    post_id: post,
                    author_id: user,
                    body: "hello".into(),
                    reply_to: None,
                }),
                1 => Event::PostDeleted(PostDeleted {
                    post_id: post,
                    author_id: user,
                }),
                2 => Event::PostLiked(PostLiked {
                    post_id: post,
                    user_id: user,
                }),
                3 => Event::PostUnliked(PostUnliked {
                    post_id: post,
                    user_id: user,
                }),
                4 => Event::UserFollowed(UserFollowed {
                    follower_id: user,
                    followee_id: other,
                }),
                5 => Event::UserUnfollowed(chronicle_events::UserUnfollowed {
                    follower_id: user,
                    followee_id: other,
                }),
                6 => Event::NotificationsRead(chronicle_events::NotificationsRead {
                    user_id: user,
                    up_to: post,
                }),
                7 => Event::ProfileUpdated(chronicle_events::ProfileUpdated {
                    user_id: user,
                    display_name: Some("A".into()),
                    bio: None,
                }),
                _ => Event::UserErased(UserErased { user_id: user }),
            }
        })
    }

    proptest! {
        /// Whatever the batch: an event comes after every earlier event it conflicts with (it
        /// writes what the other read or wrote, or reads what the other wrote), so that a step
        /// never holds two events whose order matters; and an erasure comes after everything
        /// before it and before everything after it.
        #[test]
        fn steps_keep_every_order_that_matters(
            events in proptest::collection::vec(any_event(), 0..40)
        ) {
            let events: Vec<Envelope> = events.into_iter().map(envelope).collect();
            let steps = steps_of(&events);
            for (j, later) in events.iter().enumerate() {
                let later_touches = touches(&later.event);
                for (i, earlier) in events[..j].iter().enumerate() {
                    let earlier_touches = touches(&earlier.event);
                    let erasure = matches!(earlier.event, Event::UserErased(_))
                        || matches!(later.event, Event::UserErased(_));
                    let conflict = later_touches.writes == earlier_touches.writes
                        || Some(later_touches.writes) == earlier_touches.reads
                        || later_touches.reads == Some(earlier_touches.writes);
                    if erasure || conflict {
                        prop_assert!(
                            steps[i] < steps[j],
                            "event {} ({:?}) in step {}, event {} ({:?}) in step {}",
                            i, earlier.event, steps[i], j, later.event, steps[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn events_of_unrelated_rows_share_the_first_step() {
        let events = [
            published(Uuid::now_v7()),
            liked(Uuid::now_v7(), Uuid::now_v7()),
            deleted(Uuid::now_v7()),
            envelope(Event::UserFollowed(UserFollowed {
                follower_id: Uuid::now_v7(),
                followee_id: Uuid::now_v7(),
            })),
        ];
        assert_eq!(steps_of(&events), [0, 0, 0, 0]);
    }
}
