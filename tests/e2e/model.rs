//! What the read models must say after a sequence of acknowledged commands.
//!
//! [`Model`] replays the commands the API acknowledged with the documented read-model semantics
//! (likes and follows are sets, a deleted post leaves every feed and counter, likes on a deleted
//! post are ignored), and [`assert_read_models`] compares every profile, feed, list and post the
//! query API serves against it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures_util::{StreamExt, stream};
use serde_json::Value;

use crate::harness::{NO_POSITIONS, TestApp, assert_newest_first, post_ids, user_ids};

/// A command the API acknowledged, as the model needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// `author` published `post`.
    Publish { post: String, author: String },
    /// `post` was deleted by its author.
    Delete { post: String },
    /// `user` liked `post`.
    Like { user: String, post: String },
    /// `user` unliked `post`.
    Unlike { user: String, post: String },
    /// `follower` followed `followee`.
    Follow { follower: String, followee: String },
    /// `follower` unfollowed `followee`.
    Unfollow { follower: String, followee: String },
}

#[derive(Debug, Clone)]
struct PostState {
    author: String,
    /// Publication order (per author this is the order of `published_at`).
    seq: u64,
    deleted: bool,
    likers: BTreeSet<String>,
}

/// A profile's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counters {
    /// Non-deleted posts by the user.
    pub(crate) post_count: u64,
    /// Users following the user.
    pub(crate) follower_count: u64,
    /// Users the user follows.
    pub(crate) following_count: u64,
    /// Likes on the user's non-deleted posts.
    pub(crate) likes_received: u64,
    /// Likes the user gave on non-deleted posts.
    pub(crate) likes_given: u64,
}

impl Counters {
    /// The counters of a Profile document.
    #[track_caller]
    pub(crate) fn of_profile(profile: &Value) -> Counters {
        let field = |name: &str| {
            profile
                .get(name)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("profile without integer `{name}`: {profile}"))
        };
        Counters {
            post_count: field("post_count"),
            follower_count: field("follower_count"),
            following_count: field("following_count"),
            likes_received: field("likes_received"),
            likes_given: field("likes_given"),
        }
    }
}

/// The expected state of the read models.
#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    users: Vec<String>,
    posts: BTreeMap<String, PostState>,
    follows: BTreeSet<(String, String)>,
    next_seq: u64,
}

impl Model {
    /// An empty model.
    pub(crate) fn new() -> Model {
        Model::default()
    }

    /// Records a registered user.
    pub(crate) fn add_user(&mut self, user_id: &str) {
        self.users.push(user_id.to_owned());
    }

    /// The registered users, in registration order.
    pub(crate) fn users(&self) -> &[String] {
        &self.users
    }

    /// Applies one acknowledged command.
    pub(crate) fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish { post, author } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let previous = self.posts.insert(
                    post.clone(),
                    PostState {
                        author: author.clone(),
                        seq,
                        deleted: false,
                        likers: BTreeSet::new(),
                    },
                );
                assert!(previous.is_none(), "post {post} was published twice");
            }
            Op::Delete { post } => {
                if let Some(state) = self.posts.get_mut(post) {
                    state.deleted = true;
                    state.likers.clear();
                }
            }
            Op::Like { user, post } => {
                if let Some(state) = self.posts.get_mut(post).filter(|s| !s.deleted) {
                    state.likers.insert(user.clone());
                }
            }
            Op::Unlike { user, post } => {
                if let Some(state) = self.posts.get_mut(post) {
                    state.likers.remove(user);
                }
            }
            Op::Follow { follower, followee } => {
                assert_ne!(follower, followee, "a user cannot follow themselves");
                self.follows.insert((follower.clone(), followee.clone()));
            }
            Op::Unfollow { follower, followee } => {
                self.follows.remove(&(follower.clone(), followee.clone()));
            }
        }
    }

    /// Applies a sequence of acknowledged commands in order.
    pub(crate) fn apply_all<'a>(&mut self, ops: impl IntoIterator<Item = &'a Op>) {
        for op in ops {
            self.apply(op);
        }
    }

    fn live(&self) -> impl Iterator<Item = (&String, &PostState)> {
        self.posts.iter().filter(|(_, state)| !state.deleted)
    }

    /// The expected counters of `user`.
    pub(crate) fn counters(&self, user: &str) -> Counters {
        Counters {
            post_count: self.live().filter(|(_, s)| s.author == user).count() as u64,
            follower_count: self.followers(user).len() as u64,
            following_count: self.following(user).len() as u64,
            likes_received: self
                .live()
                .filter(|(_, s)| s.author == user)
                .map(|(_, s)| s.likers.len() as u64)
                .sum(),
            likes_given: self.live().filter(|(_, s)| s.likers.contains(user)).count() as u64,
        }
    }

    /// The expected author feed of `user`: their non-deleted posts, newest first.
    pub(crate) fn author_feed(&self, user: &str) -> Vec<String> {
        let mut posts: Vec<(&String, &PostState)> =
            self.live().filter(|(_, s)| s.author == user).collect();
        posts.sort_by_key(|(_, s)| std::cmp::Reverse(s.seq));
        posts.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// The expected home timeline of `user`, as a set.
    pub(crate) fn timeline(&self, user: &str) -> BTreeSet<String> {
        let following = self.following(user);
        self.live()
            .filter(|(_, s)| s.author == user || following.contains(&s.author))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every non-deleted post.
    pub(crate) fn live_posts(&self) -> BTreeSet<String> {
        self.live().map(|(id, _)| id.clone()).collect()
    }

    /// Every post ever published, deleted or not.
    pub(crate) fn all_posts(&self) -> Vec<String> {
        self.posts.keys().cloned().collect()
    }

    /// The users who like `post`, or `None` when it is deleted (or unknown).
    pub(crate) fn likers(&self, post: &str) -> Option<&BTreeSet<String>> {
        self.posts
            .get(post)
            .filter(|s| !s.deleted)
            .map(|s| &s.likers)
    }

    /// The followers of `user`.
    pub(crate) fn followers(&self, user: &str) -> BTreeSet<String> {
        self.follows
            .iter()
            .filter(|(_, followee)| followee == user)
            .map(|(follower, _)| follower.clone())
            .collect()
    }

    /// The users `user` follows.
    pub(crate) fn following(&self, user: &str) -> BTreeSet<String> {
        self.follows
            .iter()
            .filter(|(follower, _)| follower == user)
            .map(|(_, followee)| followee.clone())
            .collect()
    }
}

/// Asserts a list has no duplicates and returns it as a set.
fn as_set(ids: Vec<String>, what: &str, mismatches: &mut Vec<String>) -> BTreeSet<String> {
    let count = ids.len();
    let set: BTreeSet<String> = ids.into_iter().collect();
    if set.len() != count {
        mismatches.push(format!("{what}: {} duplicate entries", count - set.len()));
    }
    set
}

fn diff(what: &str, expected: &BTreeSet<String>, actual: &BTreeSet<String>) -> Option<String> {
    (expected != actual).then(|| {
        let missing: Vec<_> = expected.difference(actual).collect();
        let extra: Vec<_> = actual.difference(expected).collect();
        format!(
            "{what}: expected {} entries, got {}; missing {missing:?}, unexpected {extra:?}",
            expected.len(),
            actual.len()
        )
    })
}

/// Compares everything the query API serves with `model` and panics listing every mismatch.
/// The caller must already have waited for the positions of every acknowledged command.
pub(crate) async fn assert_read_models(app: &TestApp, model: &Model) {
    let mut mismatches = Vec::new();

    // Users: counters, author feed (exact order), followers, following, timeline.
    let user_checks = stream::iter(model.users().iter().cloned())
        .map(|user| async move {
            let mut found = Vec::new();
            let profile = app.get_user(&user, NO_POSITIONS).await;
            profile.assert_status(200);
            let counters = Counters::of_profile(&profile.body);
            let expected = model.counters(&user);
            if counters != expected {
                found.push(format!(
                    "counters of {user}: expected {expected:?}, got {counters:?}"
                ));
            }

            let feed = app
                .collect_pages(&format!("/v1/users/{user}/posts"), NO_POSITIONS)
                .await;
            let feed_ids = post_ids(&feed);
            let expected_feed = model.author_feed(&user);
            if feed_ids != expected_feed {
                found.push(format!(
                    "author feed of {user}: expected {expected_feed:?}, got {feed_ids:?}"
                ));
            }
            for item in &feed {
                let author = item.pointer("/author/user_id").and_then(Value::as_str);
                if author != Some(user.as_str()) {
                    found.push(format!(
                        "author feed of {user} holds a post by {author:?}: {item}"
                    ));
                }
            }

            let followers = app
                .collect_pages(&format!("/v1/users/{user}/followers"), NO_POSITIONS)
                .await;
            let followers = as_set(
                user_ids(&followers),
                &format!("followers of {user}"),
                &mut found,
            );
            found.extend(diff(
                &format!("followers of {user}"),
                &model.followers(&user),
                &followers,
            ));

            let following = app
                .collect_pages(&format!("/v1/users/{user}/following"), NO_POSITIONS)
                .await;
            let following = as_set(
                user_ids(&following),
                &format!("following of {user}"),
                &mut found,
            );
            found.extend(diff(
                &format!("following of {user}"),
                &model.following(&user),
                &following,
            ));

            let timeline = app
                .collect_pages(&format!("/v1/users/{user}/timeline"), NO_POSITIONS)
                .await;
            assert_newest_first(&timeline, &format!("timeline of {user}"));
            let timeline = as_set(
                post_ids(&timeline),
                &format!("timeline of {user}"),
                &mut found,
            );
            found.extend(diff(
                &format!("timeline of {user}"),
                &model.timeline(&user),
                &timeline,
            ));
            found
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    mismatches.extend(user_checks.into_iter().flatten());

    // Posts: deleted ones are gone, live ones have the right like count and likes list.
    let post_checks = stream::iter(model.all_posts())
        .map(|post| async move {
            let mut found = Vec::new();
            let resp = app.get_post(&post, NO_POSITIONS).await;
            match model.likers(&post) {
                None => {
                    if resp.status != 404 || resp.code() != Some("post_not_found") {
                        found.push(format!(
                            "deleted post {post}: expected 404 post_not_found, got {resp}"
                        ));
                    }
                }
                Some(likers) => {
                    if resp.status != 200 {
                        found.push(format!("post {post}: expected 200, got {resp}"));
                        return found;
                    }
                    let like_count = resp.body.get("like_count").and_then(Value::as_u64);
                    if like_count != Some(likers.len() as u64) {
                        found.push(format!(
                            "like_count of {post}: expected {}, got {like_count:?}",
                            likers.len()
                        ));
                    }
                    let likes = app
                        .collect_pages(&format!("/v1/posts/{post}/likes"), NO_POSITIONS)
                        .await;
                    let likers_seen: Vec<String> = likes
                        .iter()
                        .map(|like| {
                            like.pointer("/user/user_id")
                                .and_then(Value::as_str)
                                .unwrap_or_else(|| panic!("like without user.user_id: {like}"))
                                .to_owned()
                        })
                        .collect();
                    let likers_seen = as_set(likers_seen, &format!("likes of {post}"), &mut found);
                    found.extend(diff(&format!("likes of {post}"), likers, &likers_seen));
                }
            }
            found
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    mismatches.extend(post_checks.into_iter().flatten());

    // The global feed: every live post exactly once, newest first.
    let feed = app.collect_pages("/v1/feed", NO_POSITIONS).await;
    assert_newest_first(&feed, "global feed");
    let feed_ids = post_ids(&feed);
    let unique: HashSet<&String> = feed_ids.iter().collect();
    if unique.len() != feed_ids.len() {
        mismatches.push(format!(
            "global feed: {} duplicates",
            feed_ids.len() - unique.len()
        ));
    }
    let feed_set: BTreeSet<String> = feed_ids.iter().cloned().collect();
    mismatches.extend(diff("global feed", &model.live_posts(), &feed_set));

    if !mismatches.is_empty() {
        let shown: Vec<_> = mismatches.iter().take(40).collect();
        panic!(
            "{} read-model mismatches (service logs: {}):\n{}",
            mismatches.len(),
            app.log_dir().display(),
            shown
                .iter()
                .map(|m| format!("  - {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
