//! A property test of the projection: random command histories go through the real command API,
//! and everything the query API then serves must be what [`Model`] predicts; the command API's
//! answers too (409 for a taken handle, 403 for another's post, 404 for an unknown or deleted
//! one, 422 for following oneself, 404 for an unknown user).
//!
//! A history is a list of [`Step`]s over a few users and posts that it makes itself. Steps name
//! users and posts by index (taken modulo those that exist when the step runs), so a shrunk
//! history still makes sense and a failure shrinks to a minimal one. One app serves every case:
//! each case registers fresh users (handles prefixed by the run's number), so cases cannot see
//! each other, and the global feed is compared on the case's own posts.
//!
//! The second test applies each history, then rebuilds the read models from the whole log twice,
//! once one event per transaction (`CHRONICLE_PROJECTOR_BATCH=1`) and once in batches of up to
//! 500 (the step planner's set-based steps): the rebuild compares each new generation with the
//! active one, `projector verify` the first with the last, and the query API must serve the
//! model's read models from each.
//!
//! The cases come from `CHRONICLE_TEST_SEED` when it is set (an unsigned integer), otherwise from
//! a random seed; either way the seed is printed, so that a failure can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use serde_json::{Value, json};

use chronicle_events::{Envelope, Event, PostLiked};
use chronicle_infra::position::Position;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::harness::{Resp, Rng, TestApp};
use crate::model::{Checks, Model, Op, Profile, read_model_mismatches};

/// Cases of the live test (about 0.1 s each here; the report at the end of a run says).
const CASES: u32 = 200;
/// Most steps in a history of the live test.
const MAX_STEPS: usize = 40;
/// Cases of the batch test: each also rebuilds the read models twice (about 2 s a case).
const BATCH_CASES: u32 = 10;
/// Most steps in a history of the batch test (longer: more for one batch to plan).
const BATCH_MAX_STEPS: usize = 60;
/// Shrinking gives up after this many attempts (each replays a history over HTTP)...
const MAX_SHRINK_ITERS: u32 = 400;
/// ...or after this long (nextest kills a test after 5 minutes; see `.config/nextest.toml`).
const MAX_SHRINK_MILLIS: u32 = 120_000;
/// Distinct handles a history draws from: registering more users than this collides.
const HANDLE_SLOTS: usize = 4;
/// Display names given at registration and in profile updates (untrimmed, as clients send them).
const NAMES: &[&str] = &["Alice", "  Bob the Builder ", "Zoë", "名前", "x"];
/// Bios, the empty one included (an update to it clears the bio).
const BIOS: &[&str] = &["", "Writes about logs.", "  padded  ", "ünïcödé ✓"];
/// Post bodies.
const BODIES: &[&str] = &["Hello, Chronicle!", "  spaced out  ", "ünïcödé ✓", "a"];

/// A user or a post a step acts on.
#[derive(Debug, Clone)]
enum Target {
    /// The one at this index (modulo those that exist), deleted posts included.
    Known(usize),
    /// An id nobody has.
    Unknown,
}

/// One command of a history. `actor` picks the acting user among those registered so far.
#[derive(Debug, Clone)]
enum Step {
    Register {
        slot: usize,
        /// Sends the handle upper-cased and padded with spaces (it is normalised first).
        shouted: bool,
        name: usize,
        bio: Option<usize>,
    },
    UpdateProfile {
        actor: usize,
        name: Option<usize>,
        bio: Option<usize>,
    },
    Publish {
        actor: usize,
        body: usize,
    },
    Delete {
        actor: usize,
        post: Target,
    },
    Like {
        actor: usize,
        post: Target,
    },
    Unlike {
        actor: usize,
        post: Target,
    },
    /// A like appended straight to the log, in the post's partition: what the command API
    /// appends when a like passes its check just before the post's deletion is projected, so it
    /// may follow the deletion in the log (and must then change nothing).
    RacingLike {
        actor: usize,
        post: Target,
    },
    Follow {
        actor: usize,
        user: Target,
    },
    Unfollow {
        actor: usize,
        user: Target,
    },
}

/// A generated case: the steps, and the page size every list is read back with.
#[derive(Debug, Clone)]
struct History {
    page_size: u32,
    steps: Vec<Step>,
}

/// Shrinks towards [`Target::Unknown`], whose commands change nothing.
fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => Just(Target::Unknown),
        6 => (0..12usize).prop_map(Target::Known),
    ]
}

fn register() -> impl Strategy<Value = Step> {
    (
        0..HANDLE_SLOTS,
        any::<bool>(),
        0..NAMES.len(),
        proptest::option::of(0..BIOS.len()),
    )
        .prop_map(|(slot, shouted, name, bio)| Step::Register {
            slot,
            shouted,
            name,
            bio,
        })
}

fn step() -> impl Strategy<Value = Step> {
    let actor = || 0..8usize;
    let profile_fields = prop_oneof![
        (0..NAMES.len()).prop_map(|n| (Some(n), None)),
        (0..BIOS.len()).prop_map(|b| (None, Some(b))),
        (0..NAMES.len(), 0..BIOS.len()).prop_map(|(n, b)| (Some(n), Some(b))),
    ];
    // A step shrinks towards the first alternative: a like, of an unknown post once its target
    // shrank, which changes nothing.
    prop_oneof![
        4 => (actor(), target()).prop_map(|(actor, post)| Step::Like { actor, post }),
        2 => register(),
        1 => (actor(), profile_fields)
            .prop_map(|(actor, (name, bio))| Step::UpdateProfile { actor, name, bio }),
        4 => (actor(), 0..BODIES.len()).prop_map(|(actor, body)| Step::Publish { actor, body }),
        2 => (actor(), target()).prop_map(|(actor, post)| Step::Delete { actor, post }),
        2 => (actor(), target()).prop_map(|(actor, post)| Step::Unlike { actor, post }),
        2 => (actor(), target()).prop_map(|(actor, post)| Step::RacingLike { actor, post }),
        3 => (actor(), target()).prop_map(|(actor, user)| Step::Follow { actor, user }),
        2 => (actor(), target()).prop_map(|(actor, user)| Step::Unfollow { actor, user }),
    ]
}

/// Histories of at most `max_steps` steps, starting with one to three registrations.
fn history(max_steps: usize) -> impl Strategy<Value = History> {
    (
        1..=4u32,
        proptest::collection::vec(register(), 1..=3),
        proptest::collection::vec(step(), 0..=max_steps - 3),
    )
        .prop_map(|(page_size, mut steps, rest)| {
            steps.extend(rest);
            History { page_size, steps }
        })
}

/// The seed of this run: `CHRONICLE_TEST_SEED`, or a random one; printed either way.
fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("CHRONICLE_TEST_SEED") {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().unwrap_or_else(|_| {
            panic!("CHRONICLE_TEST_SEED must be an unsigned integer, got {value:?}")
        }),
        _ => Rng::from_entropy().next_u64(),
    };
    println!("{test}: CHRONICLE_TEST_SEED={seed}");
    seed
}

fn runner(cases: u32, seed: u64) -> TestRunner {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        max_shrink_iters: MAX_SHRINK_ITERS,
        max_shrink_time: MAX_SHRINK_MILLIS,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// What the cases of one test share: a producer of events straight into the app's topic
/// (bypassing the command API), and a tally of what the steps did, for the report.
struct Shared {
    producer: FutureProducer,
    topic: String,
    tally: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    fn new(app: &TestApp) -> Shared {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &app.kafka_brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("failed to create a Kafka producer");
        Shared {
            producer,
            topic: app.topic.clone(),
            tally: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, kind: String) {
        *self
            .tally
            .lock()
            .expect("tally lock")
            .entry(kind)
            .or_default() += 1;
    }

    /// The tally, one `kind: count` per line.
    fn report(&self) -> String {
        let tally = self.tally.lock().expect("tally lock");
        tally
            .iter()
            .map(|(kind, n)| format!("  {n:>5}  {kind}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Appends `envelope`, keyed by its aggregate, to `partition`; returns its position.
    async fn append(&self, envelope: &Envelope, partition: i32) -> String {
        let key = envelope.aggregate_id().to_string();
        let payload = envelope.to_json();
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .partition(partition);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("failed to produce to {}: {e}", self.topic));
        Position {
            partition: delivery.partition,
            offset: delivery.offset,
        }
        .encode()
    }
}

fn parse_uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|e| panic!("the API answered with a bad id {id:?}: {e}"))
}

/// A user a history registered.
struct User {
    id: String,
    token: String,
    /// Position of the `UserRegistered` event.
    registered_at: String,
}

/// A post a history published.
struct Post {
    id: String,
    author: usize,
    /// Position of the latest event of the post (its events share a partition, in order).
    latest: String,
}

/// A history being played: what exists so far, the model, and a transcript for the report.
struct Play<'a> {
    app: &'a TestApp,
    shared: &'a Shared,
    /// Prefix of this run's handles, unique in the app.
    tag: String,
    users: Vec<User>,
    taken_slots: BTreeSet<usize>,
    posts: Vec<Post>,
    model: Model,
    positions: Vec<String>,
    transcript: String,
    page_size: u32,
}

/// What a command must answer: a status, and for a problem its code.
type Expected = (u16, Option<&'static str>);

impl<'a> Play<'a> {
    fn new(app: &'a TestApp, shared: &'a Shared, run: usize, page_size: u32) -> Play<'a> {
        Play {
            app,
            shared,
            tag: format!("p{run}"),
            users: Vec::new(),
            taken_slots: BTreeSet::new(),
            posts: Vec::new(),
            model: Model::new(),
            positions: Vec::new(),
            transcript: String::new(),
            page_size,
        }
    }

    /// Runs `step`; a mismatch with the expected answer fails the case.
    async fn step(&mut self, index: usize, step: &Step) -> Result<(), TestCaseError> {
        let line = match step {
            Step::Register {
                slot,
                shouted,
                name,
                bio,
            } => self.register(*slot, *shouted, *name, *bio).await?,
            _ if self.users.is_empty() => "skipped: no user yet".to_owned(),
            Step::UpdateProfile { actor, name, bio } => {
                self.update_profile(*actor, *name, *bio).await?
            }
            Step::Publish { actor, body } => self.publish(*actor, *body).await?,
            Step::Delete { actor, post } => self.on_post(PostCommand::Delete, *actor, post).await?,
            Step::Like { actor, post } => self.on_post(PostCommand::Like, *actor, post).await?,
            Step::Unlike { actor, post } => self.on_post(PostCommand::Unlike, *actor, post).await?,
            Step::RacingLike { actor, post } => self.racing_like(*actor, post).await,
            Step::Follow { actor, user } => self.on_user(true, *actor, user).await?,
            Step::Unfollow { actor, user } => self.on_user(false, *actor, user).await?,
        };
        let _ = writeln!(self.transcript, "  {index:>2}. {line}");
        Ok(())
    }

    /// Fails the case unless `resp` is what was expected.
    fn check(&self, what: &str, resp: &Resp, expected: Expected) -> Result<(), TestCaseError> {
        let (status, code) = expected;
        if resp.status.as_u16() == status && (code.is_none() || resp.code() == code) {
            return Ok(());
        }
        Err(TestCaseError::fail(format!(
            "{}  => {what}: expected {status} {}, got {resp}",
            self.transcript,
            code.unwrap_or("")
        )))
    }

    fn actor(&self, pick: usize) -> usize {
        pick % self.users.len()
    }

    async fn register(
        &mut self,
        slot: usize,
        shouted: bool,
        name: usize,
        bio: Option<usize>,
    ) -> Result<String, TestCaseError> {
        let handle = format!("{}_h{slot}", self.tag);
        let sent = if shouted {
            format!("  {}  ", handle.to_uppercase())
        } else {
            handle.clone()
        };
        let mut body = json!({ "handle": sent, "display_name": NAMES[name] });
        if let Some(bio) = bio {
            body["bio"] = Value::from(BIOS[bio]);
        }
        let what = format!("register {sent:?} as {:?}", NAMES[name]);
        let resp = self.app.register_with(body).await;
        let form = if shouted {
            "upper-cased, padded"
        } else {
            "as is"
        };
        if self.taken_slots.contains(&slot) {
            self.check(&what, &resp, (409, Some("handle_taken")))?;
            self.shared.count(format!(
                "register a taken handle ({form}) -> 409 handle_taken"
            ));
            return Ok(format!("{what} -> 409 handle_taken"));
        }
        self.check(&what, &resp, (201, None))?;
        self.shared
            .count(format!("register a free handle ({form}) -> 201"));
        if resp.str_field("handle") != handle {
            return Err(TestCaseError::fail(format!(
                "{}  => {what}: registered handle {:?}, expected {handle:?}",
                self.transcript,
                resp.str_field("handle")
            )));
        }
        let user = User {
            id: resp.str_field("user_id"),
            token: resp.str_field("token"),
            registered_at: resp.str_field("position"),
        };
        self.taken_slots.insert(slot);
        self.model.add_profile(
            &user.id,
            Profile {
                handle,
                display_name: NAMES[name].trim().to_owned(),
                bio: bio.map_or("", |b| BIOS[b].trim()).to_owned(),
            },
        );
        self.positions.push(user.registered_at.clone());
        let line = format!("{what} -> 201 u{}", self.users.len());
        self.users.push(user);
        Ok(line)
    }

    async fn update_profile(
        &mut self,
        actor: usize,
        name: Option<usize>,
        bio: Option<usize>,
    ) -> Result<String, TestCaseError> {
        let actor = self.actor(actor);
        let mut body = json!({});
        if let Some(name) = name {
            body["display_name"] = Value::from(NAMES[name]);
        }
        if let Some(bio) = bio {
            body["bio"] = Value::from(BIOS[bio]);
        }
        let what = format!("u{actor} updates the profile: {body}");
        let resp = self
            .app
            .update_profile(&self.users[actor].token, body)
            .await;
        self.check(&what, &resp, (202, None))?;
        self.shared.count("update the profile -> 202".to_owned());
        self.positions.push(resp.str_field("position"));
        self.model.update_profile(
            &self.users[actor].id,
            name.map(|n| NAMES[n].trim()),
            bio.map(|b| BIOS[b].trim()),
        );
        Ok(format!("{what} -> 202"))
    }

    async fn publish(&mut self, actor: usize, body: usize) -> Result<String, TestCaseError> {
        let actor = self.actor(actor);
        let what = format!("u{actor} publishes {:?}", BODIES[body]);
        let resp = self
            .app
            .publish(&self.users[actor].token, BODIES[body])
            .await;
        self.check(&what, &resp, (202, None))?;
        self.shared.count("publish -> 202".to_owned());
        let post = Post {
            id: resp.str_field("post_id"),
            author: actor,
            latest: resp.str_field("position"),
        };
        self.positions.push(post.latest.clone());
        self.model.apply(&Op::Publish {
            post: post.id.clone(),
            author: self.users[actor].id.clone(),
        });
        self.model.set_body(&post.id, BODIES[body].trim());
        let line = format!("{what} -> 202 p{}", self.posts.len());
        self.posts.push(post);
        Ok(line)
    }

    /// Delete, like or unlike `target`.
    async fn on_post(
        &mut self,
        command: PostCommand,
        actor: usize,
        target: &Target,
    ) -> Result<String, TestCaseError> {
        let actor = self.actor(actor);
        let post = match target {
            Target::Known(i) if !self.posts.is_empty() => Some(i % self.posts.len()),
            _ => None,
        };
        let (post_id, label, positions) = match post {
            Some(i) => (
                self.posts[i].id.clone(),
                format!("p{i} (by u{})", self.posts[i].author),
                vec![self.posts[i].latest.clone()],
            ),
            None => (
                uuid::Uuid::now_v7().to_string(),
                "an unknown post".to_owned(),
                Vec::new(),
            ),
        };
        let (user, token) = (&self.users[actor].id, &self.users[actor].token);
        let state = match (post, self.model.live_author(&post_id)) {
            (None, _) => "an unknown",
            (Some(_), None) => "a deleted",
            (Some(_), Some(author)) if author == user => "their own",
            (Some(_), Some(_)) => "another's",
        };
        let expected: Expected = match (command, self.model.live_author(&post_id)) {
            (_, None) => (404, Some("post_not_found")),
            (PostCommand::Delete, Some(author)) if author != user => (403, Some("forbidden")),
            _ => (202, None),
        };
        let what = format!("u{actor} {} {label}", command.verb());
        let app = self.app;
        let resp = match command {
            PostCommand::Delete => app.delete_post(token, &post_id, &positions).await,
            PostCommand::Like => app.like(token, &post_id, &positions).await,
            PostCommand::Unlike => app.unlike(token, &post_id, &positions).await,
        };
        let user = user.clone();
        self.check(&what, &resp, expected)?;
        self.shared.count(format!(
            "{} {state} post -> {}",
            command.verb(),
            outcome(expected)
        ));
        if let (Some(i), 202) = (post, expected.0) {
            let position = resp.str_field("position");
            self.posts[i].latest.clone_from(&position);
            self.positions.push(position);
            let post = post_id;
            self.model.apply(&match command {
                PostCommand::Delete => Op::Delete { post },
                PostCommand::Like => Op::Like { user, post },
                PostCommand::Unlike => Op::Unlike { user, post },
            });
        }
        Ok(format!("{what} -> {}", outcome(expected)))
    }

    /// Appends a like of `target` to the log directly (see [`Step::RacingLike`]).
    async fn racing_like(&mut self, actor: usize, target: &Target) -> String {
        let actor = self.actor(actor);
        let post = match target {
            Target::Known(i) if !self.posts.is_empty() => i % self.posts.len(),
            _ => return format!("u{actor} races a like of an unknown post: skipped"),
        };
        let (user, post_id) = (&self.users[actor].id, &self.posts[post].id);
        let envelope = Envelope::new(
            parse_uuid(user),
            Event::PostLiked(PostLiked {
                post_id: parse_uuid(post_id),
                user_id: parse_uuid(user),
            }),
        );
        let partition = Position::decode(&self.posts[post].latest)
            .expect("the command API answers with valid positions")
            .partition;
        let position = self.shared.append(&envelope, partition).await;
        let state = if self.model.live_author(post_id).is_some() {
            "live"
        } else {
            "deleted"
        };
        self.shared
            .count(format!("race a like of a {state} post into the log"));
        let line = format!(
            "u{actor} races a like of p{post} (by u{}, {state}) into the log",
            self.posts[post].author,
        );
        self.model.apply(&Op::Like {
            user: user.clone(),
            post: post_id.clone(),
        });
        self.posts[post].latest.clone_from(&position);
        self.positions.push(position);
        line
    }

    /// Follow (or unfollow) `target`.
    async fn on_user(
        &mut self,
        follow: bool,
        actor: usize,
        target: &Target,
    ) -> Result<String, TestCaseError> {
        let actor = self.actor(actor);
        let followee = match target {
            Target::Known(i) => Some(i % self.users.len()),
            Target::Unknown => None,
        };
        let (followee_id, label, positions) = match followee {
            Some(i) => (
                self.users[i].id.clone(),
                format!("u{i}"),
                vec![self.users[i].registered_at.clone()],
            ),
            None => (
                uuid::Uuid::now_v7().to_string(),
                "an unknown user".to_owned(),
                Vec::new(),
            ),
        };
        let expected: Expected = match followee {
            Some(i) if i == actor => (422, Some("cannot_follow_self")),
            Some(_) => (202, None),
            None => (404, Some("user_not_found")),
        };
        let what = format!(
            "u{actor} {} {label}",
            if follow { "follows" } else { "unfollows" }
        );
        let token = &self.users[actor].token;
        let resp = if follow {
            self.app.follow(token, &followee_id, &positions).await
        } else {
            self.app.unfollow(token, &followee_id, &positions).await
        };
        self.check(&what, &resp, expected)?;
        let whom = match followee {
            Some(i) if i == actor => "themselves",
            Some(_) => "another user",
            None => "an unknown user",
        };
        self.shared.count(format!(
            "{} {whom} -> {}",
            if follow { "follow" } else { "unfollow" },
            outcome(expected)
        ));
        if expected.0 == 202 {
            self.positions.push(resp.str_field("position"));
            let (follower, followee) = (self.users[actor].id.clone(), followee_id);
            self.model.apply(&if follow {
                Op::Follow { follower, followee }
            } else {
                Op::Unfollow { follower, followee }
            });
        }
        Ok(format!("{what} -> {}", outcome(expected)))
    }

    /// Waits for every acknowledged command, then compares the read models with the model.
    async fn compare(&self, after: &str) -> Result<(), TestCaseError> {
        self.app.wait_for(&self.positions).await;
        let checks = Checks {
            shared_app: true,
            sequential: true,
            page_size: self.page_size,
        };
        let mismatches = read_model_mismatches(self.app, &self.model, checks).await;
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(TestCaseError::fail(format!(
            "{}  => {after}, with lists read in pages of {}: {} read-model mismatches \
             (service logs: {}):\n{}",
            self.transcript,
            self.page_size,
            mismatches.len(),
            self.app.log_dir().display(),
            mismatches
                .iter()
                .take(20)
                .map(|m| format!("     - {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }
}

#[derive(Debug, Clone, Copy)]
enum PostCommand {
    Delete,
    Like,
    Unlike,
}

impl PostCommand {
    fn verb(self) -> &'static str {
        match self {
            PostCommand::Delete => "deletes",
            PostCommand::Like => "likes",
            PostCommand::Unlike => "unlikes",
        }
    }
}

fn outcome((status, code): Expected) -> String {
    match code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    }
}

/// Plays `history` (as run number `run`) and compares the read models with the model.
async fn play<'a>(
    app: &'a TestApp,
    shared: &'a Shared,
    run: usize,
    history: &History,
) -> Result<Play<'a>, TestCaseError> {
    let mut play = Play::new(app, shared, run, history.page_size);
    for (index, step) in history.steps.iter().enumerate() {
        play.step(index, step).await?;
    }
    play.compare("after the history").await?;
    Ok(play)
}

/// Runs `test` on `cases` histories of at most `max_steps` steps; panics with the minimal
/// failing history (its transcript and mismatches) if one fails.
async fn check_histories<F, Fut>(name: &str, cases: u32, max_steps: usize, shared: &Shared, test: F)
where
    F: Fn(usize, History) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let seed = test_seed(name);
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner(cases, seed).run(&history(max_steps), |history| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            runtime.block_on(test(run, history))
        })
    });
    let runs = runs.load(Ordering::SeqCst);
    let took = started.elapsed();
    println!(
        "{name}: {runs} histories played in {:.1} s; their steps:\n{}",
        took.as_secs_f64(),
        shared.report()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, minimal)) => panic!(
            "{name}: a history failed (CHRONICLE_TEST_SEED={seed} replays it); shrunk ({runs} \
             histories played in all, {} s), the minimal one is, with pages of {}:\n{}\n\n\
             {minimal:#?}",
            took.as_secs(),
            minimal.page_size,
            why.message()
        ),
        Err(TestError::Abort(why)) => panic!("{name}: aborted (seed {seed}): {why}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_histories_project_as_the_model_predicts() {
    let app = TestApp::spawn().await;
    let app = &app;
    let shared = &Shared::new(app);
    check_histories(
        "random_histories_project_as_the_model_predicts",
        CASES,
        MAX_STEPS,
        shared,
        |run, history| async move { play(app, shared, run, &history).await.map(drop) },
    )
    .await;
    app.assert_services_alive();
}

/// The generation a `projector rebuild` switched to, from its output.
fn activated(out: &str) -> Option<String> {
    let rest = &out[out.find("generation g")? + "generation ".len()..];
    let name: String = rest
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    rest[name.len()..].starts_with(" is active").then_some(name)
}

/// Rebuilds the read models from the whole log with `batch` events per transaction at most,
/// and returns the generation it switched to. The rebuild compares the new generation with the
/// active one when both were built by the same projection code, and refuses to switch on a
/// difference; [`verify`] compares them in any case.
async fn rebuild(app: &TestApp, batch: &str, transcript: &str) -> Result<String, TestCaseError> {
    let (rebuilt, out, err) = app
        .projector_cli_with(&["rebuild"], &[("CHRONICLE_PROJECTOR_BATCH", batch)])
        .await;
    match activated(&out) {
        Some(generation) if rebuilt => Ok(generation),
        _ => Err(TestCaseError::fail(format!(
            "{transcript}  => the rebuild with CHRONICLE_PROJECTOR_BATCH={batch} failed:\n\
             {out}\n{err}"
        ))),
    }
}

/// `projector verify a b`: fails unless generations `a` and `b` hold the same rows.
async fn verify(app: &TestApp, a: &str, b: &str, transcript: &str) -> Result<(), TestCaseError> {
    let (same, out, err) = app.projector_cli(&["verify", a, b]).await;
    if same {
        return Ok(());
    }
    Err(TestCaseError::fail(format!(
        "{transcript}  => verify {a} {b} found differences:\n{out}\n{err}"
    )))
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_one_at_a_time_build_the_same_read_models() {
    let app = TestApp::spawn().await;
    let app = &app;
    let shared = &Shared::new(app);
    check_histories(
        "batches_and_one_at_a_time_build_the_same_read_models",
        BATCH_CASES,
        BATCH_MAX_STEPS,
        shared,
        |run, history| {
            async move {
                // Live: the projector applied the commands as they came, mostly one by one.
                let play = play(app, shared, run, &history).await?;
                let (status_ok, before, _) = app.projector_cli(&["generations", "list"]).await;
                prop_assert!(status_ok, "generations list failed");
                let live = before
                    .lines()
                    .find(|line| line.contains("\tactive"))
                    .and_then(|line| line.split('\t').next())
                    .map(str::to_owned);
                let Some(live) = live else {
                    return Err(TestCaseError::fail(format!(
                        "no active generation: {before}"
                    )));
                };
                // One event per transaction.
                let one_by_one = rebuild(app, "1", &play.transcript).await?;
                verify(app, &live, &one_by_one, &play.transcript).await?;
                play.compare(&format!(
                    "after a rebuild one event at a time ({one_by_one})"
                ))
                .await?;
                // Up to 500 events a transaction, cut into the planner's steps: replaying from
                // offset 0, a worker finds most of its partition already arrived.
                let batched = rebuild(app, "500", &play.transcript).await?;
                verify(app, &one_by_one, &batched, &play.transcript).await?;
                verify(app, &live, &batched, &play.transcript).await?;
                play.compare(&format!("after a rebuild in batches of 500 ({batched})"))
                    .await?;
                for retired in [&live, &one_by_one] {
                    let (dropped, out, err) =
                        app.projector_cli(&["generations", "drop", retired]).await;
                    prop_assert!(dropped, "generations drop {retired}: {out}{err}");
                }
                Ok(())
            }
        },
    )
    .await;
    app.assert_services_alive();
}
