//! Partitions progress independently: one partition whose events cannot apply for a while (a
//! row lock held from another session) holds up nobody else, is retried rather than parked, and
//! does not keep the projector from stopping on SIGTERM.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::harness::{TestApp, TestPost, TestUser};

/// How soon commands on the other partitions must become readable while one is stuck.
const FRESH_WITHIN: Duration = Duration::from_secs(15);
/// How soon the projector must exit after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// The partition a position names (positions are base64url of a big-endian partition and
/// offset; the test reads them only to choose users on other partitions).
fn partition_of(position: &str) -> i32 {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(position)
        .expect("a position is base64url");
    i32::from_be_bytes(bytes[..4].try_into().expect("a position has 12 bytes"))
}

/// The test database's URL with the projector's sessions giving up on a lock after 200 ms.
fn with_lock_timeout(app: &TestApp) -> String {
    let separator = if app.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "{}{separator}options=-c%20lock_timeout%3D200",
        app.database_url
    )
}

/// Replaces the test's projector by one whose sessions have a short `lock_timeout`, so that a
/// held row lock makes its statements fail with 55P03 (lock_not_available), a transient error.
async fn use_projector_with_lock_timeout(app: &TestApp) {
    let (status, _) = app
        .terminate_projector_at(0, EXIT_WITHIN)
        .await
        .expect("the projector did not stop on SIGTERM");
    assert!(status.success(), "the projector exited with {status}");
    app.start_projector_with(&[("DATABASE_URL", &with_lock_timeout(app))])
        .await;
}

/// A session holding `FOR UPDATE` on the rows `select` (a query with `{s}` for the active
/// read-model schema and `$1` for `id`) finds, until it is dropped or rolled back.
async fn hold_rows(app: &TestApp, select: &str, id: &str) -> tokio_postgres::Client {
    let db = app.db().await;
    let generation: String = db
        .query_one(
            "SELECT name FROM projection.generations WHERE state = 'active'",
            &[],
        )
        .await
        .expect("no active generation")
        .get(0);
    let id = uuid::Uuid::parse_str(id).expect("ids are UUIDs");
    db.batch_execute("BEGIN").await.expect("BEGIN failed");
    let held = db
        .query(
            &select.replace("{s}", &format!("read_{generation}")),
            &[&id],
        )
        .await
        .expect("cannot lock the rows");
    assert_eq!(held.len(), 1, "expected one row to hold");
    db
}

async fn dead_letters(app: &TestApp) -> Vec<(String, String)> {
    app.db()
        .await
        .query(
            "SELECT key, error FROM projection.dead_letters ORDER BY id",
            &[],
        )
        .await
        .expect("failed to read projection.dead_letters")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// A post, and registered users whose events go to other partitions than the post's.
struct Scene {
    post: TestPost,
    likers: Vec<TestUser>,
    others: Vec<TestUser>,
}

async fn scene(app: &TestApp, likers: usize) -> Scene {
    let author = app.register_user("author", "Author").await;
    let post = app.publish_post(&author, "hold this one").await;
    let stuck = partition_of(&post.position);
    let mut registered = vec![author.position.clone(), post.position.clone()];
    let mut liking = Vec::new();
    for n in 0..likers {
        let liker = app.register_user(&format!("liker{n}"), "Liker").await;
        registered.push(liker.position.clone());
        liking.push(liker);
    }
    let mut others = Vec::new();
    for n in 0..40 {
        if others.len() == 3 {
            break;
        }
        let user = app.register_user(&format!("other{n}"), "Other").await;
        registered.push(user.position.clone());
        if partition_of(&user.position) != stuck {
            others.push(user);
        }
    }
    assert_eq!(others.len(), 3, "no users on other partitions than {stuck}");
    app.wait_for(&registered).await;
    Scene {
        post,
        likers: liking,
        others,
    }
}

/// Every liker likes the post; the likes' positions (all on the post's partition).
async fn like_all(app: &TestApp, scene: &Scene) -> Vec<String> {
    let mut positions = Vec::new();
    for liker in &scene.likers {
        let liked = app.like(&liker.token, &scene.post.id, &[]).await;
        liked.assert_status(202);
        let position = liked.str_field("position");
        assert_eq!(
            partition_of(&position),
            partition_of(&scene.post.position),
            "a like is not on its post's partition"
        );
        positions.push(position);
    }
    positions
}

/// The other users update their profiles; asserts that every update is readable within
/// [`FRESH_WITHIN`].
async fn assert_others_stay_fresh(app: &TestApp, scene: &Scene, round: &str) {
    let started = Instant::now();
    let mut positions = Vec::new();
    for user in &scene.others {
        let updated = app
            .update_profile(&user.token, json!({ "bio": format!("fresh {round}") }))
            .await;
        updated.assert_status(202);
        positions.push(updated.str_field("position"));
    }
    app.wait_for_within(&positions, FRESH_WITHIN).await;
    for user in &scene.others {
        assert_eq!(
            app.get_user(&user.id, &positions).await.str_field("bio"),
            format!("fresh {round}")
        );
    }
    eprintln!(
        "the other partitions' updates were readable after {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// Waits until a session of the test database waits for a lock (the projector, blocked by the
/// held row), within 30 s.
async fn wait_until_blocked(app: &TestApp) {
    let db = app.db().await;
    let started = Instant::now();
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("cannot read pg_stat_activity")
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the projector never waited for the held row (logs: {})",
            app.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_liked_exactly_once(app: &TestApp, scene: &Scene, likes: &[String]) {
    app.wait_for(likes).await;
    let post = app.get_post(&scene.post.id, likes).await;
    post.assert_status(200);
    assert_eq!(
        post.u64_field("like_count"),
        scene.likers.len() as u64,
        "{post}"
    );
    let listed = app
        .collect_pages(&format!("/v1/posts/{}/likes", scene.post.id), likes)
        .await;
    assert_eq!(listed.len(), scene.likers.len(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_stuck_on_a_lock_leaves_the_others_fresh_and_parks_nothing() {
    // Arrange: a projector that gives up on a lock after 200 ms (a transient error) and takes
    // small batches (so that more likes than a batch or two wait behind the stuck one), and
    // the post's row held from another session.
    let app = TestApp::builder()
        .consistency_wait_ms(2000)
        .env("CHRONICLE_PROJECTOR_BATCH", "2")
        .spawn()
        .await;
    use_projector_with_lock_timeout(&app).await;
    let scene = scene(&app, 12).await;
    let holder = hold_rows(
        &app,
        "SELECT 1 FROM {s}.posts WHERE post_id = $1 FOR UPDATE",
        &scene.post.id,
    )
    .await;

    // Act: likes of the post (its partition is stuck), then commands on other partitions.
    let likes = like_all(&app, &scene).await;
    assert_others_stay_fresh(&app, &scene, "while stuck").await;

    // Assert: the likes are not applied (nor parked) while the row is held...
    app.get_post(&scene.post.id, &likes)
        .await
        .assert_problem(503, "stale_read");
    assert_eq!(dead_letters(&app).await, Vec::new());
    // ...and are applied, each once, when it is released.
    holder.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_liked_exactly_once(&app, &scene, &likes).await;
    assert_eq!(dead_letters(&app).await, Vec::new());
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_projector_promptly_while_a_partition_is_stuck() {
    // Arrange: small batches, and the post's row held; the projector (no lock timeout) waits in
    // a statement on the post's partition with more likes behind it.
    let app = TestApp::builder()
        .consistency_wait_ms(2000)
        .env("CHRONICLE_PROJECTOR_BATCH", "2")
        .spawn()
        .await;
    let scene = scene(&app, 12).await;
    let holder = hold_rows(
        &app,
        "SELECT 1 FROM {s}.posts WHERE post_id = $1 FOR UPDATE",
        &scene.post.id,
    )
    .await;
    let likes = like_all(&app, &scene).await;
    wait_until_blocked(&app).await;
    assert_others_stay_fresh(&app, &scene, "while blocked").await;

    // Act: SIGTERM.
    let stopped = app.terminate_projector_at(0, EXIT_WITHIN).await;

    // Assert: it exited in time, successfully; a new projector applies every like once after
    // the row is released (the abandoned batch is redone).
    let (status, took) = stopped.unwrap_or_else(|| {
        panic!(
            "the projector did not exit within {} s of SIGTERM (logs: {})",
            EXIT_WITHIN.as_secs(),
            app.log_dir().display()
        )
    });
    eprintln!(
        "the projector exited {:.2} s after SIGTERM",
        took.as_secs_f64()
    );
    assert!(status.success(), "the projector exited with {status}");
    app.start_projector().await;
    holder.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_liked_exactly_once(&app, &scene, &likes).await;
    assert_eq!(dead_letters(&app).await, Vec::new());
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn event_by_event_mode_retries_a_transient_error_instead_of_parking() {
    // Arrange: a user, their row held, and, in one batch on their partition, a registration
    // that can never apply (its display name holds a NUL character, which PostgreSQL's text
    // cannot store: the batch falls back to event by event) and the user's own profile update
    // (which meets the lock: a transient error).
    let app = TestApp::builder().consistency_wait_ms(2000).spawn().await;
    let user = app.register_user("holder", "Holder").await;
    app.wait_for(std::slice::from_ref(&user.position)).await;
    let holder = hold_rows(
        &app,
        "SELECT 1 FROM {s}.users WHERE user_id = $1 FOR UPDATE",
        &user.id,
    )
    .await;
    let (status, _) = app
        .terminate_projector_at(0, EXIT_WITHIN)
        .await
        .expect("the projector did not stop on SIGTERM");
    assert!(status.success(), "the projector exited with {status}");
    let impostor = uuid::Uuid::now_v7().to_string();
    let registered = json!({
        "event_id": uuid::Uuid::now_v7(),
        "type": "UserRegistered",
        "schema_version": 1,
        "occurred_at": "2026-11-26T09:30:00.123Z",
        "actor": impostor,
        "aggregate_id": impostor,
        "data": {"user_id": impostor, "handle": "nul_byte", "display_name": "Nul\u{0}Byte", "bio": ""},
    })
    .to_string();
    app.produce_raw(
        &impostor,
        Some(partition_of(&user.position)),
        registered.as_bytes(),
    )
    .await;
    let updated = app
        .update_profile(&user.token, json!({ "bio": "applied once released" }))
        .await;
    updated.assert_status(202);
    let after = vec![updated.str_field("position")];

    // Act: a projector with a short lock timeout takes both up in one batch.
    app.start_projector_with(&[("DATABASE_URL", &with_lock_timeout(&app))])
        .await;

    // Assert: the update is retried, not parked, while the row is held; once released it
    // applies, and only the impostor is a dead letter.
    app.get_user(&user.id, &after)
        .await
        .assert_problem(503, "stale_read");
    holder.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    app.wait_for(&after).await;
    assert_eq!(
        app.get_user(&user.id, &after).await.str_field("bio"),
        "applied once released"
    );
    let parked = dead_letters(&app).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0, impostor, "{parked:?}");
    assert!(parked[0].1.starts_with("could not apply"), "{parked:?}");
    app.assert_services_alive();
}
