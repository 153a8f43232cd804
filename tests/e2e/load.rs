//! A random workload: one task per user, each sending a random sequence of commands, one at a
//! time, and recording only the commands the API acknowledged (2xx).
//!
//! The recorded commands are what the read models must eventually show ([`crate::model`]);
//! rejected commands (404 for a post the read models do not have yet, 503 while the projector is
//! down) produce no event and are simply not recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::harness::{NO_POSITIONS, Resp, Rng, TestApp, TestPost, TestUser};
use crate::model::Op;

/// A post commands may target.
#[derive(Debug, Clone)]
struct PoolPost {
    id: String,
    author: String,
    /// The position of a post whose publication the test already waited for: passing it lets
    /// the existence check see the post without waiting.
    seed_position: Option<String>,
    /// The position of the publication (known to the author).
    position: String,
}

#[derive(Debug, Default)]
struct Shared {
    ops: Vec<Op>,
    positions: Vec<String>,
    pool: Vec<PoolPost>,
    attempted: usize,
    rejected: Vec<String>,
}

/// How much load to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadConfig {
    /// Commands each user sends at least.
    pub(crate) commands_per_user: usize,
    /// Commands each user sends at most, while `keep_going` is still false.
    pub(crate) max_commands_per_user: usize,
}

/// What the load did.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    /// The acknowledged commands, in acknowledgement order.
    pub(crate) ops: Vec<Op>,
    /// The positions of the acknowledged commands.
    pub(crate) positions: Vec<String>,
    /// Commands sent.
    pub(crate) attempted: usize,
}

/// Runs one task per user until each sent `commands_per_user` commands and `done` is true (or
/// `max_commands_per_user` is reached). `seeded` are posts already projected.
pub(crate) async fn run(
    app: Arc<TestApp>,
    users: &[TestUser],
    seeded: &[TestPost],
    config: LoadConfig,
    done: Arc<AtomicBool>,
    rng: &mut Rng,
) -> LoadResult {
    let shared = Arc::new(Mutex::new(Shared {
        pool: seeded
            .iter()
            .map(|post| PoolPost {
                id: post.id.clone(),
                author: post.author.clone(),
                seed_position: Some(post.position.clone()),
                position: post.position.clone(),
            })
            .collect(),
        ..Shared::default()
    }));
    let user_ids: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.id.clone()).collect());

    let mut tasks = Vec::new();
    for user in users {
        let worker = Worker {
            app: app.clone(),
            user: user.clone(),
            users: user_ids.clone(),
            shared: shared.clone(),
            rng: Rng::seeded(rng.next_u64()),
            liked: Vec::new(),
            following: Vec::new(),
        };
        let done = done.clone();
        tasks.push(tokio::spawn(worker.run(config, done)));
    }
    for task in tasks {
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    let shared = std::mem::take(&mut *shared.lock().expect("load state lock"));
    let acknowledged = shared.ops.len();
    // Guard against a vacuous pass: a good share of the commands must have been accepted.
    assert!(
        acknowledged * 3 >= shared.attempted,
        "only {acknowledged} of {} commands were acknowledged; rejections seen: {:?}",
        shared.attempted,
        shared.rejected.iter().take(20).collect::<Vec<_>>()
    );
    LoadResult {
        ops: shared.ops,
        positions: shared.positions,
        attempted: shared.attempted,
    }
}

struct Worker {
    app: Arc<TestApp>,
    user: TestUser,
    users: Arc<Vec<String>>,
    shared: Arc<Mutex<Shared>>,
    rng: Rng,
    liked: Vec<String>,
    following: Vec<String>,
}

impl Worker {
    async fn run(mut self, config: LoadConfig, done: Arc<AtomicBool>) {
        let mut sent = 0;
        while sent < config.commands_per_user
            || (!done.load(Ordering::SeqCst) && sent < config.max_commands_per_user)
        {
            self.step(sent).await;
            sent += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("load state lock")
    }

    /// A random post; half the time one of the seeded posts, which are known to be projected
    /// (so likes keep being accepted while the projector is down).
    fn random_post(&mut self) -> Option<PoolPost> {
        let shared = self.shared.lock().expect("load state lock");
        if self.rng.below(2) == 0 {
            let seeded: Vec<&PoolPost> = shared
                .pool
                .iter()
                .filter(|p| p.seed_position.is_some())
                .collect();
            if let Some(post) = self.rng.pick(&seeded) {
                return Some((*post).clone());
            }
        }
        self.rng.pick(&shared.pool).cloned()
    }

    fn random_other_user(&mut self) -> String {
        loop {
            let candidate = self.rng.pick(&self.users).cloned().expect("users exist");
            if candidate != self.user.id {
                return candidate;
            }
        }
    }

    /// The position to pass when acting on `post`: only for posts known to be projected, so a
    /// command never waits on a projector that is down.
    fn positions_for(post: &PoolPost) -> Vec<String> {
        post.seed_position.iter().cloned().collect()
    }

    async fn step(&mut self, index: usize) {
        let token = self.user.token.clone();
        let roll = self.rng.below(100);
        match roll {
            0..20 => self.publish(index).await,
            20..50 => {
                let Some(post) = self.random_post() else {
                    return self.publish(index).await;
                };
                let resp = self
                    .app
                    .like(&token, &post.id, &Self::positions_for(&post))
                    .await;
                if self.record(
                    &resp,
                    Op::Like {
                        user: self.user.id.clone(),
                        post: post.id.clone(),
                    },
                ) {
                    self.liked.push(post.id);
                }
            }
            50..65 => {
                let target = if !self.liked.is_empty() && self.rng.below(10) < 7 {
                    let index = self.rng.below(self.liked.len());
                    let id = self.liked.swap_remove(index);
                    let shared = self.lock();
                    shared.pool.iter().find(|p| p.id == id).cloned()
                } else {
                    self.random_post()
                };
                let Some(post) = target else {
                    return self.publish(index).await;
                };
                let resp = self
                    .app
                    .unlike(&token, &post.id, &Self::positions_for(&post))
                    .await;
                self.record(
                    &resp,
                    Op::Unlike {
                        user: self.user.id.clone(),
                        post: post.id,
                    },
                );
            }
            65..80 => {
                let followee = self.random_other_user();
                let resp = self.app.follow(&token, &followee, NO_POSITIONS).await;
                if self.record(
                    &resp,
                    Op::Follow {
                        follower: self.user.id.clone(),
                        followee: followee.clone(),
                    },
                ) {
                    self.following.push(followee);
                }
            }
            80..90 => {
                let followee = if !self.following.is_empty() && self.rng.below(10) < 7 {
                    let index = self.rng.below(self.following.len());
                    self.following.swap_remove(index)
                } else {
                    self.random_other_user()
                };
                let resp = self.app.unfollow(&token, &followee, NO_POSITIONS).await;
                self.record(
                    &resp,
                    Op::Unfollow {
                        follower: self.user.id.clone(),
                        followee,
                    },
                );
            }
            _ => {
                let own: Vec<PoolPost> = {
                    let shared = self.lock();
                    shared
                        .pool
                        .iter()
                        .filter(|p| p.author == self.user.id)
                        .cloned()
                        .collect()
                };
                let Some(post) = self.rng.pick(&own).cloned() else {
                    return self.publish(index).await;
                };
                // The author knows where their post is: wait for it (a 503 while the projector
                // is down is fine and not recorded).
                let resp = self
                    .app
                    .delete_post(&token, &post.id, std::slice::from_ref(&post.position))
                    .await;
                if self.record(
                    &resp,
                    Op::Delete {
                        post: post.id.clone(),
                    },
                ) {
                    self.lock().pool.retain(|p| p.id != post.id);
                }
            }
        }
    }

    async fn publish(&mut self, index: usize) {
        let body = format!(
            "load post {index} by {} ({})",
            self.user.handle,
            self.rng.next_u64()
        );
        let resp = self.app.publish(&self.user.token, &body).await;
        let post_id = resp
            .body
            .get("post_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let op = Op::Publish {
            post: post_id.clone().unwrap_or_default(),
            author: self.user.id.clone(),
        };
        if self.record(&resp, op) {
            let post_id =
                post_id.unwrap_or_else(|| panic!("publish answered without post_id: {resp}"));
            self.lock().pool.push(PoolPost {
                id: post_id,
                author: self.user.id.clone(),
                seed_position: None,
                position: resp.str_field("position"),
            });
        }
    }

    /// Records `op` when `resp` acknowledges it; returns whether it did. Fails the test on any
    /// answer other than 2xx, 404 (target not projected yet or deleted) and 503.
    fn record(&self, resp: &Resp, op: Op) -> bool {
        let mut shared = self.lock();
        shared.attempted += 1;
        if resp.status.is_success() {
            let position = resp
                .body
                .get("position")
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{op:?} acknowledged without a position: {resp}"))
                .to_owned();
            shared.ops.push(op);
            shared.positions.push(position);
            return true;
        }
        let acceptable = matches!(
            (resp.status.as_u16(), resp.code()),
            (404, Some("post_not_found" | "user_not_found"))
                | (503, _)
                | (429, Some("rate_limited"))
        );
        assert!(acceptable, "unexpected answer to {op:?}: {resp}");
        shared
            .rejected
            .push(format!("{op:?}: {} {:?}", resp.status, resp.code()));
        false
    }
}
