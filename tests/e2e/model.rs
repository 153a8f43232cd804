//! What the read models must say after a sequence of acknowledged commands.
//!
//! [`Model`] replays the commands the API acknowledged with the documented read-model semantics
//! (likes and follows are sets, a deleted post leaves every feed and counter, likes on a deleted
//! post are ignored), and [`assert_read_models`] compares every profile, feed, list and post the
//! query API serves against it. A caller that also records profiles ([`Model::add_profile`]) and
//! post bodies ([`Model::set_body`]) gets those compared too, and [`read_model_mismatches`] with
//! its [`Checks`] compares strictly (exact orders, every post a feed shows) or only the model's
//! own users' share of an app that others use too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures_util::{StreamExt, stream};
use serde_json::Value;

use crate::harness::{MAX_LIMIT, NO_POSITIONS, TestApp, assert_newest_first, post_ids, user_ids};

/// A notification as the model predicts it: its kind, its actor and its post (if any).
pub(crate) type Notified = (String, String, Option<String>);

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
    /// `user` was erased: from then on nothing by or about them is in the read models, as if
    /// they had never been there (their posts are deleted, their likes and follows undone).
    Erase { user: String },
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

/// The profile fields of a user, as the command API normalised them (trimmed; the handle also
/// lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    /// The handle.
    pub(crate) handle: String,
    /// The display name.
    pub(crate) display_name: String,
    /// The bio (`""` when none was given).
    pub(crate) bio: String,
}

/// The expected state of the read models.
#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    users: Vec<String>,
    posts: BTreeMap<String, PostState>,
    follows: BTreeSet<(String, String)>,
    next_seq: u64,
    /// Profiles of the users registered with [`Model::add_profile`] (the others' are not
    /// compared).
    profiles: BTreeMap<String, Profile>,
    /// Bodies of the posts recorded with [`Model::set_body`].
    bodies: BTreeMap<String, String>,
    /// The erased users (no longer in `users`).
    erased: BTreeSet<String>,
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

    /// Records a registered user together with the profile registration gave them.
    pub(crate) fn add_profile(&mut self, user_id: &str, profile: Profile) {
        self.add_user(user_id);
        self.profiles.insert(user_id.to_owned(), profile);
    }

    /// Applies an acknowledged profile update of `user` (a field left `None` keeps its value).
    pub(crate) fn update_profile(
        &mut self,
        user: &str,
        display_name: Option<&str>,
        bio: Option<&str>,
    ) {
        let profile = self
            .profiles
            .get_mut(user)
            .unwrap_or_else(|| panic!("profile update of {user}, whose profile is not modelled"));
        if let Some(display_name) = display_name {
            display_name.clone_into(&mut profile.display_name);
        }
        if let Some(bio) = bio {
            bio.clone_into(&mut profile.bio);
        }
    }

    /// The profile of `user`, if recorded with [`Model::add_profile`].
    pub(crate) fn profile(&self, user: &str) -> Option<&Profile> {
        self.profiles.get(user)
    }

    /// Records the body (as normalised) of a published post.
    pub(crate) fn set_body(&mut self, post: &str, body: &str) {
        self.bodies.insert(post.to_owned(), body.to_owned());
    }

    /// The author of `post` while it is live; `None` when it is deleted or unknown.
    pub(crate) fn live_author(&self, post: &str) -> Option<&str> {
        self.posts
            .get(post)
            .filter(|s| !s.deleted)
            .map(|s| s.author.as_str())
    }

    /// The erased users.
    pub(crate) fn erased(&self) -> &BTreeSet<String> {
        &self.erased
    }

    /// Applies one acknowledged command. A command by or about an erased user (acknowledged in
    /// a race with the erasure) changes nothing but leaves its post, if it made one, deleted.
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
                        deleted: self.erased.contains(author),
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
                if self.erased.contains(user) {
                    return;
                }
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
                if !self.erased.contains(follower) && !self.erased.contains(followee) {
                    self.follows.insert((follower.clone(), followee.clone()));
                }
            }
            Op::Unfollow { follower, followee } => {
                self.follows.remove(&(follower.clone(), followee.clone()));
            }
            Op::Erase { user } => {
                for state in self.posts.values_mut() {
                    if state.author == *user {
                        state.deleted = true;
                        state.likers.clear();
                    } else {
                        state.likers.remove(user);
                    }
                }
                self.follows.retain(|(a, b)| a != user && b != user);
                self.users.retain(|u| u != user);
                self.profiles.remove(user);
                self.erased.insert(user.clone());
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

    /// The expected global feed: every live post, newest (last published) first.
    pub(crate) fn global_feed(&self) -> Vec<String> {
        self.newest_first(|_| true)
    }

    /// The expected home timeline of `user` in order, newest first.
    pub(crate) fn timeline_newest_first(&self, user: &str) -> Vec<String> {
        let following = self.following(user);
        self.newest_first(|s| s.author == user || following.contains(&s.author))
    }

    fn newest_first(&self, keep: impl Fn(&PostState) -> bool) -> Vec<String> {
        let mut posts: Vec<(&String, &PostState)> = self.live().filter(|(_, s)| keep(s)).collect();
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

    /// The notifications `user` holds: (kind, actor, post) for each like of their live posts by
    /// someone else and each follow of them. (The model has no replies.)
    pub(crate) fn notifications(&self, user: &str) -> BTreeSet<Notified> {
        let liked = self
            .live()
            .filter(|(_, state)| state.author == user)
            .flat_map(|(post, state)| {
                state
                    .likers
                    .iter()
                    .filter(|liker| *liker != user)
                    .map(|liker| ("liked".to_owned(), liker.clone(), Some(post.clone())))
            });
        let followed = self
            .follows
            .iter()
            .filter(|(_, followee)| followee == user)
            .map(|(follower, _)| ("followed".to_owned(), follower.clone(), None));
        liked.chain(followed).collect()
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

/// How strictly [`read_model_mismatches`] compares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks {
    /// Users outside the model share the app: the global feed is compared only on the posts of
    /// the model's users.
    pub(crate) shared_app: bool,
    /// The commands were applied one after another, so the order of publication is known:
    /// timelines and the global feed must be in exactly the model's order, every post a feed
    /// shows must carry the model's like count, and likes lists must be newest first.
    pub(crate) sequential: bool,
    /// The page size lists are walked with (1 to [`MAX_LIMIT`]).
    pub(crate) page_size: u32,
}

impl Checks {
    /// What [`assert_read_models`] checks: an app of the model's users alone, where only each
    /// author's order of publication is known; lists in pages of [`MAX_LIMIT`].
    pub(crate) const WHOLE: Checks = Checks {
        shared_app: false,
        sequential: false,
        page_size: MAX_LIMIT,
    };
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

/// Compares a UserSummary with the modelled profile of its user, if there is one.
fn check_summary(model: &Model, summary: &Value, what: &str, found: &mut Vec<String>) {
    let Some(user) = summary.get("user_id").and_then(Value::as_str) else {
        found.push(format!("{what}: user summary without `user_id`: {summary}"));
        return;
    };
    let Some(profile) = model.profile(user) else {
        return;
    };
    let shown = (
        summary.get("handle").and_then(Value::as_str),
        summary.get("display_name").and_then(Value::as_str),
    );
    let expected = (
        Some(profile.handle.as_str()),
        Some(profile.display_name.as_str()),
    );
    if shown != expected {
        found.push(format!(
            "{what}: summary of {user}: expected (handle, display_name) {expected:?}, got {shown:?}"
        ));
    }
}

/// Compares a Post shown in a feed with the model: its author's summary and its body where
/// modelled, and with `checks.sequential` its like count.
fn check_post_item(
    model: &Model,
    checks: Checks,
    item: &Value,
    what: &str,
    found: &mut Vec<String>,
) {
    let post = item.get("post_id").and_then(Value::as_str).unwrap_or("?");
    match item.get("author") {
        Some(author) => check_summary(model, author, &format!("{what}, post {post}"), found),
        None => found.push(format!("{what}: post without `author`: {item}")),
    }
    if let Some(body) = model.bodies.get(post) {
        let shown = item.get("body").and_then(Value::as_str);
        if shown != Some(body.as_str()) {
            found.push(format!(
                "{what}: body of {post}: expected {body:?}, got {shown:?}"
            ));
        }
    }
    if checks.sequential
        && let Some(likers) = model.likers(post)
    {
        let like_count = item.get("like_count").and_then(Value::as_u64);
        if like_count != Some(likers.len() as u64) {
            found.push(format!(
                "{what}: like_count of {post}: expected {}, got {like_count:?}",
                likers.len()
            ));
        }
    }
}

/// Compares the profile documents of `user` (by id and, when modelled, by handle).
async fn check_profile(app: &TestApp, model: &Model, user: &str, found: &mut Vec<String>) {
    let profile = app.get_user(user, NO_POSITIONS).await;
    if profile.status != 200 {
        found.push(format!("profile of {user}: expected 200, got {profile}"));
        return;
    }
    let counters = Counters::of_profile(&profile.body);
    let expected = model.counters(user);
    if counters != expected {
        found.push(format!(
            "counters of {user}: expected {expected:?}, got {counters:?}"
        ));
    }
    let Some(modelled) = model.profile(user) else {
        return;
    };
    let field = |name: &str| profile.body.get(name).and_then(Value::as_str);
    let shown = (field("handle"), field("display_name"), field("bio"));
    let expected = (
        Some(modelled.handle.as_str()),
        Some(modelled.display_name.as_str()),
        Some(modelled.bio.as_str()),
    );
    if shown != expected {
        found.push(format!(
            "profile of {user}: expected (handle, display_name, bio) {expected:?}, got {shown:?}"
        ));
    }
    let by_handle = app
        .get(
            &format!("/v1/users/by-handle/{}", modelled.handle),
            NO_POSITIONS,
        )
        .await;
    let owner = by_handle.body.get("user_id").and_then(Value::as_str);
    if by_handle.status != 200 || owner != Some(user) {
        found.push(format!(
            "profile by handle {:?}: expected 200 for {user}, got {by_handle}",
            modelled.handle
        ));
    }
}

/// Compares everything the query API serves about `user` with the model.
async fn check_user(app: &TestApp, model: &Model, checks: Checks, user: &str) -> Vec<String> {
    let mut found = Vec::new();
    let page = checks.page_size;
    check_profile(app, model, user, &mut found).await;

    let feed = app
        .collect_pages_with(&format!("/v1/users/{user}/posts"), page, NO_POSITIONS)
        .await;
    let feed_ids = post_ids(&feed);
    let expected_feed = model.author_feed(user);
    if feed_ids != expected_feed {
        found.push(format!(
            "author feed of {user}: expected {expected_feed:?}, got {feed_ids:?}"
        ));
    }
    for item in &feed {
        let author = item.pointer("/author/user_id").and_then(Value::as_str);
        if author != Some(user) {
            found.push(format!(
                "author feed of {user} holds a post by {author:?}: {item}"
            ));
        }
        check_post_item(
            model,
            checks,
            item,
            &format!("author feed of {user}"),
            &mut found,
        );
    }

    for (list, expected) in [
        ("followers", model.followers(user)),
        ("following", model.following(user)),
    ] {
        let what = format!("{list} of {user}");
        let summaries = app
            .collect_pages_with(&format!("/v1/users/{user}/{list}"), page, NO_POSITIONS)
            .await;
        for summary in &summaries {
            check_summary(model, summary, &what, &mut found);
        }
        let shown = as_set(user_ids(&summaries), &what, &mut found);
        found.extend(diff(&what, &expected, &shown));
    }

    check_notifications(app, model, checks, user, &mut found).await;

    let what = format!("timeline of {user}");
    let timeline = app
        .collect_pages_with(&format!("/v1/users/{user}/timeline"), page, NO_POSITIONS)
        .await;
    assert_newest_first(&timeline, &what);
    for item in &timeline {
        check_post_item(model, checks, item, &what, &mut found);
    }
    let timeline_ids = post_ids(&timeline);
    if checks.sequential {
        let expected = model.timeline_newest_first(user);
        if timeline_ids != expected {
            found.push(format!(
                "{what}: expected {expected:?}, got {timeline_ids:?}"
            ));
        }
    } else {
        let shown = as_set(timeline_ids, &what, &mut found);
        found.extend(diff(&what, &model.timeline(user), &shown));
    }
    found
}

/// Compares `user`'s notifications and unread count (nothing is marked read in the model) with
/// the model, reading them with a token the test makes for `user`.
async fn check_notifications(
    app: &TestApp,
    model: &Model,
    checks: Checks,
    user: &str,
    found: &mut Vec<String>,
) {
    let token = app.session_token_for(user).await;
    let what = format!("notifications of {user}");
    let items = app
        .collect_private_pages("/v1/me/notifications", &token, checks.page_size)
        .await;
    let ours: HashSet<&str> = model.users().iter().map(String::as_str).collect();
    let mut shown = Vec::new();
    for item in &items {
        let actor = item.pointer("/actor/user_id").and_then(Value::as_str);
        if checks.shared_app && !actor.is_some_and(|actor| ours.contains(actor)) {
            continue;
        }
        check_summary(model, &item["actor"], &what, found);
        if item["read"] != Value::Bool(false) {
            found.push(format!("{what}: nothing was marked read, yet {item}"));
        }
        shown.push((
            item["kind"].as_str().unwrap_or_default().to_owned(),
            actor.unwrap_or_default().to_owned(),
            item["post_id"].as_str().map(str::to_owned),
        ));
    }
    let ids: Vec<&str> = items
        .iter()
        .filter_map(|item| item["notification_id"].as_str())
        .collect();
    if ids.windows(2).any(|pair| pair[0] <= pair[1]) {
        found.push(format!("{what}: not newest first, or repeated: {ids:?}"));
    }
    let count = shown.len();
    let shown: BTreeSet<Notified> = shown.into_iter().collect();
    if shown.len() != count {
        found.push(format!("{what}: {} duplicates", count - shown.len()));
    }
    let expected = model.notifications(user);
    if shown != expected {
        found.push(format!("{what}: expected {expected:?}, got {shown:?}"));
    }
    if !checks.shared_app {
        let unread = app
            .send(
                app.query("/v1/me/notifications/unread-count")
                    .bearer_auth(&token),
            )
            .await;
        if unread.status != 200 || unread.body["count"] != expected.len() {
            found.push(format!(
                "unread count of {user}: expected {}, got {unread}",
                expected.len()
            ));
        }
    }
}

/// Compares a post (deleted ones are gone; live ones have the right like count and likes list).
async fn check_post(app: &TestApp, model: &Model, checks: Checks, post: &str) -> Vec<String> {
    let mut found = Vec::new();
    let resp = app.get_post(post, NO_POSITIONS).await;
    let Some(likers) = model.likers(post) else {
        if resp.status != 404 || resp.code() != Some("post_not_found") {
            found.push(format!(
                "deleted post {post}: expected 404 post_not_found, got {resp}"
            ));
        }
        return found;
    };
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
    check_post_item(
        model,
        checks,
        &resp.body,
        &format!("post {post}"),
        &mut found,
    );
    let what = format!("likes of {post}");
    let likes = app
        .collect_pages_with(
            &format!("/v1/posts/{post}/likes"),
            checks.page_size,
            NO_POSITIONS,
        )
        .await;
    let mut likers_seen = Vec::new();
    let mut liked_at = Vec::new();
    for like in &likes {
        let user = like
            .get("user")
            .unwrap_or_else(|| panic!("like without `user`: {like}"));
        check_summary(model, user, &what, &mut found);
        likers_seen.push(
            user.get("user_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("like without user.user_id: {like}"))
                .to_owned(),
        );
        liked_at.push(like.get("liked_at").and_then(Value::as_str).unwrap_or(""));
    }
    // RFC 3339 with milliseconds in UTC, all of one length: text order is time order.
    if checks.sequential && liked_at.windows(2).any(|pair| pair[0] < pair[1]) {
        found.push(format!("{what}: not newest first: {liked_at:?}"));
    }
    let likers_seen = as_set(likers_seen, &what, &mut found);
    found.extend(diff(&what, likers, &likers_seen));
    found
}

/// Compares everything the query API serves with `model` and returns every mismatch.
/// The caller must already have waited for the positions of every acknowledged command.
pub(crate) async fn read_model_mismatches(
    app: &TestApp,
    model: &Model,
    checks: Checks,
) -> Vec<String> {
    let mut mismatches = Vec::new();

    // Erased users: no profile.
    for user in model.erased() {
        let resp = app.get_user(user, NO_POSITIONS).await;
        if resp.status != 404 || resp.code() != Some("user_not_found") {
            mismatches.push(format!(
                "erased user {user}: expected 404 user_not_found, got {resp}"
            ));
        }
    }

    // Users: profile and counters, author feed (exact order), followers, following, timeline.
    let user_checks = stream::iter(model.users().iter().cloned())
        .map(|user| async move { check_user(app, model, checks, &user).await })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    mismatches.extend(user_checks.into_iter().flatten());

    let post_checks = stream::iter(model.all_posts())
        .map(|post| async move { check_post(app, model, checks, &post).await })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    mismatches.extend(post_checks.into_iter().flatten());

    // The global feed: every live post exactly once, newest first.
    let page = if checks.shared_app {
        MAX_LIMIT
    } else {
        checks.page_size
    };
    let mut feed = app.collect_pages_with("/v1/feed", page, NO_POSITIONS).await;
    assert_newest_first(&feed, "global feed");
    if checks.shared_app {
        let ours: HashSet<&str> = model.users().iter().map(String::as_str).collect();
        feed.retain(|post| {
            post.pointer("/author/user_id")
                .and_then(Value::as_str)
                .is_some_and(|author| ours.contains(author))
        });
    }
    for item in &feed {
        check_post_item(model, checks, item, "global feed", &mut mismatches);
    }
    let feed_ids = post_ids(&feed);
    if checks.sequential {
        let expected = model.global_feed();
        if feed_ids != expected {
            mismatches.push(format!(
                "global feed: expected {expected:?}, got {feed_ids:?}"
            ));
        }
    } else {
        let unique: HashSet<&String> = feed_ids.iter().collect();
        if unique.len() != feed_ids.len() {
            mismatches.push(format!(
                "global feed: {} duplicates",
                feed_ids.len() - unique.len()
            ));
        }
        let feed_set: BTreeSet<String> = feed_ids.iter().cloned().collect();
        mismatches.extend(diff("global feed", &model.live_posts(), &feed_set));
    }
    mismatches
}

/// Compares everything the query API serves with `model` ([`Checks::WHOLE`]) and panics listing
/// every mismatch. The caller must already have waited for the positions of every acknowledged
/// command.
pub(crate) async fn assert_read_models(app: &TestApp, model: &Model) {
    let mismatches = read_model_mismatches(app, model, Checks::WHOLE).await;
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
