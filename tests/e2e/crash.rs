//! Crash safety: the projector is SIGKILLed again and again under load, and the read models
//! still show every acknowledged command exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;

use crate::harness::{Rng, TestApp, TestPost, TestUser};
use crate::load::{self, LoadConfig};
use crate::model::{Model, Op, assert_read_models};

const USERS: usize = 20;
const SEED_POSTS_PER_USER: usize = 2;
const KILLS: usize = 5;

/// Registers `count` users and publishes `posts_per_user` posts for each, then waits until all
/// of it is projected.
pub(crate) async fn seed(
    app: &TestApp,
    count: usize,
    posts_per_user: usize,
) -> (Vec<TestUser>, Vec<TestPost>) {
    let users: Vec<TestUser> = join_all((0..count).map(|i| async move {
        app.register_user(&format!("user_{i:02}"), &format!("User {i}"))
            .await
    }))
    .await;
    let posts: Vec<TestPost> = join_all(users.iter().map(|user| async move {
        let mut posts = Vec::new();
        for n in 0..posts_per_user {
            posts.push(
                app.publish_post(user, &format!("seed post {n} by {}", user.handle))
                    .await,
            );
        }
        posts
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let positions: Vec<String> = users
        .iter()
        .map(|u| u.position.clone())
        .chain(posts.iter().map(|p| p.position.clone()))
        .collect();
    app.wait_for(&positions).await;
    (users, posts)
}

/// The model of the seed plus the acknowledged load.
pub(crate) fn expected(users: &[TestUser], posts: &[TestPost], ops: &[Op]) -> Model {
    let mut model = Model::new();
    for user in users {
        model.add_user(&user.id);
    }
    for post in posts {
        model.apply(&Op::Publish {
            post: post.id.clone(),
            author: post.author.clone(),
        });
    }
    model.apply_all(ops);
    model
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_under_load_loses_and_doubles_nothing() {
    // Arrange
    let app = Arc::new(TestApp::builder().partitions(12).spawn().await);
    let mut rng = Rng::for_test();
    println!(
        "crash test seed {:#x}, logs in {}",
        rng.state(),
        app.log_dir().display()
    );
    let (users, seeded) = seed(&app, USERS, SEED_POSTS_PER_USER).await;

    // Act: load from one task per user while another task kills and restarts the projector.
    let faults_done = Arc::new(AtomicBool::new(false));
    let load_finished = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn({
        let app = app.clone();
        let faults_done = faults_done.clone();
        let load_finished = load_finished.clone();
        let mut rng = Rng::seeded(rng.next_u64());
        async move {
            // Kills that hit a running projector while the load was still being sent.
            let mut kills_under_load = 0;
            for _ in 0..KILLS {
                // Kill at an arbitrary moment: while the projector catches up with the load,
                // and also while a projector just started is still joining the group.
                // This sleep times the fault; nothing waits on it for a read.
                tokio::time::sleep(rng.millis_between(0, 1500)).await;
                let running = app.kill_projector();
                if running > 0 && !load_finished.load(Ordering::SeqCst) {
                    kills_under_load += 1;
                }
                tokio::time::sleep(rng.millis_between(0, 500)).await;
                app.start_projector().await;
            }
            faults_done.store(true, Ordering::SeqCst);
            kills_under_load
        }
    });
    let config = LoadConfig {
        commands_per_user: 150,
        max_commands_per_user: 1_000,
    };
    let result = load::run(app.clone(), &users, &seeded, config, faults_done, &mut rng).await;
    load_finished.store(true, Ordering::SeqCst);
    let kills = killer
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    if app.running_projectors() == 0 {
        app.start_projector().await;
    }
    // A killed member's partitions move on after its session timeout (6 s).
    app.wait_for_within(&result.positions, Duration::from_secs(180))
        .await;

    // Assert: every kill hit a live projector under load (a projector that had died by itself,
    // or a load that ended before the faults, would test nothing).
    assert_eq!(
        kills, KILLS,
        "only {kills} of {KILLS} kills hit a running projector while the load was running"
    );
    println!(
        "{} of {} commands acknowledged, projector killed {kills} times under load",
        result.ops.len(),
        result.attempted
    );
    let model = expected(&users, &seeded, &result.ops);
    assert_read_models(&app, &model).await;

    // A rebuild from the whole log yields the same read models: it compares every table's
    // checksum with the live generation's before it switches, and refuses to switch otherwise.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    assert_read_models(&app, &model).await;
    app.assert_services_alive();
}
