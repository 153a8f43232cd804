//! Erasure (`DELETE /v1/users/me`): the user leaves every read model and counter, their handle
//! is free, their tokens are refused, a rebuild agrees, and the log keeps nothing of theirs that
//! can be read (their data key is destroyed: crypto-shredding). Also under faults: the projector
//! SIGKILLed again and again while other users' commands flow, the user's own commands racing
//! the erasure, and a rebuild running while a user is erased.
//!
//! What the raw-log scan finds: the erased user's fields written since sealing, only sealed and
//! with no key left; a field written before sealing existed (a version-1 event), still in
//! plaintext. The log is not rewritten (no migration of the topic): the README says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::crash::{expected, seed};
use crate::harness::{
    NO_POSITIONS, PASSWORD, Rng, TestApp, TestUser, post_ids, user_ids, with_positions,
};
use crate::load::{self, LoadConfig};
use crate::model::{Op, assert_read_models};

/// Alice's personal strings, each distinctive enough to appear nowhere by chance.
const HANDLE: &str = "erasable_ann";
const DISPLAY_NAME: &str = "Annalise Vermilion";
const BIO: &str = "Collects teaspoons";
const BODY: &str = "Thoughts on marmalade";
const REPLY: &str = "A footnote about quinces";
/// A bio Alice set before personal fields were sealed: a version-1 event, in plaintext.
const LEGACY_BIO: &str = "Rode the funicular twice";

/// `GET` at `positions` as `token`.
async fn read_as(app: &TestApp, path: &str, token: &str, positions: &[String]) -> Value {
    let resp = app
        .send(with_positions(
            app.query(path).bearer_auth(token),
            positions,
        ))
        .await;
    resp.assert_status(200);
    resp.body
}

#[tokio::test]
async fn an_erased_user_leaves_every_read_model_and_the_log_keeps_nothing_readable() {
    // Arrange: Alice posts, replies, likes and follows; Bob and Carol act on her things.
    let app = TestApp::spawn().await;
    let registered = app
        .register_with(json!({ "handle": HANDLE, "display_name": DISPLAY_NAME, "bio": BIO }))
        .await;
    registered.assert_status(201);
    let alice = TestUser {
        id: registered.str_field("user_id"),
        handle: registered.str_field("handle"),
        token: registered.str_field("token"),
        position: registered.str_field("position"),
    };
    let mut legacy: Value =
        serde_json::from_str(include_str!("../../events/fixtures/v1/ProfileUpdated.json"))
            .expect("JSON");
    legacy["event_id"] = json!(uuid::Uuid::now_v7());
    for field in ["actor", "aggregate_id"] {
        legacy[field] = json!(alice.id);
    }
    legacy["data"] = json!({ "user_id": alice.id, "bio": LEGACY_BIO });
    app.produce_envelope(&legacy.to_string()).await;
    let bob = app.register_user("bob", "Bob").await;
    let carol = app.register_user("carol", "Carol").await;
    let bobs = app.publish_post(&bob, "Bob's post").await;
    let hers = app.publish_post(&alice, BODY).await;
    let mut all = vec![
        alice.position.clone(),
        bob.position.clone(),
        carol.position.clone(),
        bobs.position.clone(),
        hers.position.clone(),
    ];
    app.wait_for(&all).await;
    let reply = |token: &str, body: &str, parent: &str| {
        app.send(with_positions(
            app.command(reqwest::Method::POST, "/v1/posts")
                .bearer_auth(token)
                .json(&json!({ "body": body, "reply_to": parent })),
            NO_POSITIONS,
        ))
    };
    let her_reply = reply(&alice.token, REPLY, &bobs.id).await;
    her_reply.assert_status(202);
    let carols_reply = reply(&carol.token, "Carol replies", &hers.id).await;
    carols_reply.assert_status(202);
    for resp in [
        her_reply.clone(),
        carols_reply.clone(),
        app.like(&bob.token, &hers.id, NO_POSITIONS).await,
        app.like(&alice.token, &bobs.id, NO_POSITIONS).await,
        app.follow(&alice.token, &bob.id, NO_POSITIONS).await,
        app.follow(&bob.token, &alice.id, NO_POSITIONS).await,
        app.follow(&carol.token, &bob.id, NO_POSITIONS).await,
    ] {
        resp.assert_status(202);
        all.push(resp.str_field("position"));
    }
    app.wait_for(&all).await;
    let before = read_as(&app, "/v1/me/notifications", &bob.token, &all).await;
    assert_eq!(
        before["items"].as_array().map(Vec::len),
        Some(4),
        "Alice's like, follow and reply, Carol's follow: {before}"
    );

    // Act: a wrong password, then the erasure.
    app.erase(&alice.token, "not her password")
        .await
        .assert_problem(403, "invalid_credentials");
    app.send(
        app.command(reqwest::Method::DELETE, "/v1/users/me")
            .json(&json!({ "password": PASSWORD })),
    )
    .await
    .assert_problem(401, "unauthorized");
    let erased = app.erase(&alice.token, PASSWORD).await;
    erased.assert_status(202);
    all.push(erased.str_field("position"));
    app.wait_for(&all).await;

    // Assert: she is gone from every read model...
    app.get_user(&alice.id, &all)
        .await
        .assert_problem(404, "user_not_found");
    app.get(&format!("/v1/users/by-handle/{HANDLE}"), &all)
        .await
        .assert_problem(404, "user_not_found");
    for post in [&hers.id, &her_reply.str_field("post_id")] {
        app.get_post(post, &all)
            .await
            .assert_problem(404, "post_not_found");
    }
    let feed = post_ids(&app.collect_pages("/v1/feed", &all).await);
    let carols = carols_reply.str_field("post_id");
    assert_eq!(
        feed,
        vec![carols.clone(), bobs.id.clone()],
        "the global feed"
    );
    // ...and from every counter and list of the others.
    let profile = app.get_user(&bob.id, &all).await;
    for (counter, value) in [
        ("post_count", 1),
        ("follower_count", 1),
        ("following_count", 0),
        ("likes_received", 0),
        ("likes_given", 0),
    ] {
        assert_eq!(profile.body[counter], value, "Bob's {counter}: {profile}");
    }
    assert_eq!(app.get_post(&bobs.id, &all).await.body["like_count"], 0);
    assert_eq!(
        user_ids(
            &app.collect_pages(&format!("/v1/users/{}/followers", bob.id), &all)
                .await
        ),
        vec![carol.id.clone()]
    );
    assert!(
        app.collect_pages(&format!("/v1/posts/{}/likes", bobs.id), &all)
            .await
            .is_empty()
    );
    let notified = read_as(&app, "/v1/me/notifications", &bob.token, &all).await;
    let actors: Vec<&str> = notified["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["actor"]["user_id"].as_str())
        .collect();
    assert_eq!(actors, vec![carol.id.as_str()], "Bob's notifications");
    assert_eq!(
        app.get_post(&carols, &all).await.body["body"],
        "Carol replies",
        "a reply to her post stays, as a reply to a deleted post does"
    );
    for query in [
        "/v1/search/users?q=erasable",
        "/v1/search/posts?q=marmalade",
    ] {
        let found = app.get(query, &all).await;
        found.assert_status(200);
        assert!(found.page_items().is_empty(), "{query}: {found}");
    }

    // Her token is refused, her password opens nothing, her handle is free.
    app.publish(&alice.token, "still here?")
        .await
        .assert_problem(401, "unauthorized");
    app.login(HANDLE, PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    let again = app.register_user(HANDLE, "Someone Else").await;
    assert_ne!(again.id, alice.id);
    all.push(again.position.clone());

    // The raw log: every partition, every byte. Her fields are there only sealed, under a key
    // that is gone.
    let records = app.whole_topic().await;
    let bytes: usize = records.iter().map(Vec::len).sum();
    let needle = format!("\"key\":\"{}\"", alice.id);
    let sealed: usize = records
        .iter()
        .map(|record| {
            record
                .windows(needle.len())
                .filter(|w| *w == needle.as_bytes())
                .count()
        })
        .sum();
    let mut shown = Vec::new();
    for secret in [HANDLE, DISPLAY_NAME, BIO, BODY, REPLY] {
        for form in [secret.to_owned(), secret.to_lowercase()] {
            let form = form.as_bytes();
            if records
                .iter()
                .any(|record| record.windows(form.len()).any(|w| w == form))
            {
                shown.push(String::from_utf8_lossy(form).into_owned());
            }
        }
    }
    let legacy_found = records.iter().any(|record| {
        record
            .windows(LEGACY_BIO.len())
            .any(|w| w == LEGACY_BIO.as_bytes())
    });
    let keys: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM command.data_keys WHERE user_id = $1::text::uuid",
            &[&alice.id],
        )
        .await
        .expect("count her keys")
        .get(0);
    println!(
        "raw-log scan after erasure: {} records, {bytes} bytes, every partition: {sealed} sealed \
         fields of the erased user, {keys} keys to open them, {} of 5 personal strings written \
         since sealing in plaintext; the one written before sealing (a version-1 event) still \
         in plaintext: {legacy_found} (the log is not rewritten; the README says so)",
        records.len(),
        shown.len()
    );
    assert_eq!(
        sealed, 5,
        "handle, display name, bio and two bodies, sealed"
    );
    assert_eq!(keys, 0, "her data key is destroyed");
    assert!(shown.is_empty(), "the raw log shows {shown:?}");
    assert!(
        legacy_found,
        "the plaintext of an event from before sealing"
    );

    // A rebuild from the whole log yields the same read models, and she stays gone.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    app.get_user(&alice.id, &all)
        .await
        .assert_problem(404, "user_not_found");
    let feed = post_ids(&app.collect_pages("/v1/feed", &all).await);
    assert_eq!(
        feed,
        vec![carols, bobs.id.clone()],
        "the feed after the rebuild"
    );
}

#[tokio::test]
async fn a_user_without_a_password_sets_one_before_erasing() {
    let app = TestApp::spawn().await;
    let user = app.register_user("legacy_lee", "Lee").await;
    // As a user registered before passwords: no credentials, a token of the legacy session.
    let db = app.db().await;
    db.execute(
        "DELETE FROM command.credentials WHERE user_id = $1::text::uuid",
        &[&user.id],
    )
    .await
    .expect("forget the password");
    let token = app.session_token_for(&user.id).await;
    app.erase(&token, PASSWORD)
        .await
        .assert_problem(403, "invalid_credentials");
    app.change_password(&token, json!({ "new_password": "a brand new secret" }))
        .await
        .assert_status(204);
    let token = app.login("legacy_lee", "a brand new secret").await;
    token.assert_status(201);
    let erased = app
        .erase(&token.str_field("token"), "a brand new secret")
        .await;
    erased.assert_status(202);
    app.get_user(&user.id, &[erased.str_field("position")])
        .await
        .assert_problem(404, "user_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn erasures_while_the_projector_is_killed_under_load_lose_and_leave_nothing() {
    // Arrange: users who carry the load, and victims who post, like and follow among them
    // before they are erased in the middle of it.
    const VICTIMS: usize = 3;
    const KILLS: usize = 4;
    let app = Arc::new(TestApp::builder().partitions(8).spawn().await);
    let mut rng = Rng::for_test();
    println!(
        "erasure crash test seed {:#x}, logs in {}",
        rng.state(),
        app.log_dir().display()
    );
    let (users, seed_posts) = seed(&app, 12, 2).await;
    let shared: &TestApp = &app;
    let victims: Vec<TestUser> = join_all((0..VICTIMS).map(|i| async move {
        shared
            .register_user(&format!("victim_{i}"), &format!("Victim {i}"))
            .await
    }))
    .await;
    let mut seeded = seed_posts.clone();
    let mut setup = Vec::new();
    let mut positions = Vec::new();
    for victim in &victims {
        let post = app.publish_post(victim, "a post that will go").await;
        setup.push(Op::Publish {
            post: post.id.clone(),
            author: victim.id.clone(),
        });
        positions.push(post.position.clone());
        seeded.push(post);
    }
    app.wait_for(&positions).await;
    for victim in &victims {
        for _ in 0..3 {
            let other = rng.pick(&users).expect("users").clone();
            let post = rng.pick(&seeded).expect("posts").clone();
            for (resp, op) in [
                (
                    app.follow(&victim.token, &other.id, NO_POSITIONS).await,
                    Op::Follow {
                        follower: victim.id.clone(),
                        followee: other.id.clone(),
                    },
                ),
                (
                    app.follow(&other.token, &victim.id, NO_POSITIONS).await,
                    Op::Follow {
                        follower: other.id.clone(),
                        followee: victim.id.clone(),
                    },
                ),
                (
                    app.like(&victim.token, &post.id, NO_POSITIONS).await,
                    Op::Like {
                        user: victim.id.clone(),
                        post: post.id.clone(),
                    },
                ),
            ] {
                resp.assert_status(202);
                positions.push(resp.str_field("position"));
                setup.push(op);
            }
        }
    }
    app.wait_for(&positions).await;

    // Act: load from the users; the projector killed and restarted again and again; each
    // victim erased at a random moment.
    let faults_done = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn({
        let app = app.clone();
        let faults_done = faults_done.clone();
        let mut rng = Rng::seeded(rng.next_u64());
        async move {
            for _ in 0..KILLS {
                // These sleeps time the faults; nothing waits on them for a read.
                tokio::time::sleep(rng.millis_between(200, 1500)).await;
                app.kill_projector();
                tokio::time::sleep(rng.millis_between(0, 500)).await;
                app.start_projector().await;
            }
            faults_done.store(true, Ordering::SeqCst);
        }
    });
    let eraser = tokio::spawn({
        let app = app.clone();
        let victims = victims.clone();
        let mut rng = Rng::seeded(rng.next_u64());
        async move {
            let mut erased = Vec::new();
            for victim in victims {
                tokio::time::sleep(rng.millis_between(100, 2000)).await;
                let resp = app.erase(&victim.token, PASSWORD).await;
                resp.assert_status(202);
                erased.push((victim.id.clone(), resp.str_field("position")));
            }
            erased
        }
    });
    let config = LoadConfig {
        commands_per_user: 60,
        max_commands_per_user: 600,
    };
    let result = load::run(app.clone(), &users, &seeded, config, faults_done, &mut rng).await;
    killer
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let erased = eraser
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if app.running_projectors() == 0 {
        app.start_projector().await;
    }
    let mut waits = result.positions.clone();
    waits.extend(erased.iter().map(|(_, position)| position.clone()));
    app.wait_for_within(&waits, Duration::from_secs(180)).await;

    // Assert: the read models are the model's, with the victims erased; a rebuild agrees.
    println!(
        "{} of {} commands acknowledged, {} users erased, projector killed {KILLS} times",
        result.ops.len(),
        result.attempted,
        erased.len()
    );
    let mut ops = setup;
    ops.extend(result.ops);
    ops.extend(erased.into_iter().map(|(user, _)| Op::Erase { user }));
    let mut everyone = users.clone();
    everyone.extend(victims);
    let model = expected(&everyone, &seed_posts, &ops);
    assert_read_models(&app, &model).await;
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    assert_read_models(&app, &model).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_racing_their_users_erasure_are_refused_or_erased_never_visible() {
    const RACERS: usize = 16;
    // Arrange
    let app = Arc::new(TestApp::spawn().await);
    let bob = app.register_user("racing_bob", "Bob").await;
    let bobs = app.publish_post(&bob, "Bob's post").await;
    let victim = app.register_user("racing_victim", "Victim").await;
    app.wait_for(&[victim.position.clone(), bobs.position.clone()])
        .await;

    // Act: the victim publishes, likes and follows from several tasks, each until its token is
    // refused, while they are erased.
    let racers: Vec<_> = (0..RACERS)
        .map(|task| {
            let (app, victim) = (app.clone(), victim.clone());
            let (post, bob) = (bobs.id.clone(), bob.id.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while n < 1000 {
                    let resp = match n % 3 {
                        0 => {
                            app.publish(&victim.token, &format!("racing post {task}-{n}"))
                                .await
                        }
                        1 => app.like(&victim.token, &post, NO_POSITIONS).await,
                        _ => app.follow(&victim.token, &bob, NO_POSITIONS).await,
                    };
                    let refused = resp.status == 401;
                    answers.push(resp);
                    if refused {
                        break;
                    }
                    n += 1;
                }
                answers
            })
        })
        .collect();
    // This sleep lets the racers get going; nothing waits on it for a read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let erased = app.erase(&victim.token, PASSWORD).await;
    erased.assert_status(202);
    let erasure = erased.str_field("position");
    let answers: Vec<_> = join_all(racers)
        .await
        .into_iter()
        .flat_map(|answers| answers.expect("a racer panicked"))
        .collect();

    // Assert: every command was acknowledged or refused as unauthorized; nothing acknowledged
    // is visible, whether its event came before or after the erasure in the log.
    let mut waits = vec![erasure];
    let mut posts = Vec::new();
    for resp in &answers {
        match resp.status.as_u16() {
            202 => {
                waits.push(resp.str_field("position"));
                if let Some(post) = resp.body.get("post_id").and_then(Value::as_str) {
                    posts.push(post.to_owned());
                }
            }
            401 => assert_eq!(resp.code(), Some("unauthorized"), "{resp}"),
            _ => panic!("a racing command got {resp}"),
        }
    }
    let refused = answers.iter().filter(|r| r.status == 401).count();
    assert_eq!(refused, RACERS, "each racer ends refused");
    assert!(!posts.is_empty(), "no racing post was acknowledged");
    app.wait_for(&waits).await;
    // How many of the acknowledged posts were written after the erasure (as the read models
    // date them): the race this test is about. Printed, not asserted: it depends on timing.
    let after: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM read_g1.posts p JOIN read_g1.erased_users x
                 ON x.user_id = p.author_id
             WHERE p.author_id = $1::text::uuid AND p.published_at > x.erased_at",
            &[&victim.id],
        )
        .await
        .expect("count the late posts")
        .get(0);
    println!(
        "{} racing commands: {} acknowledged ({} posts, {after} of them written after the \
         erasure), {refused} refused",
        answers.len(),
        answers.len() - refused,
        posts.len()
    );
    app.get_user(&victim.id, &waits)
        .await
        .assert_problem(404, "user_not_found");
    for post in &posts {
        app.get_post(post, &waits)
            .await
            .assert_problem(404, "post_not_found");
    }
    assert_eq!(
        post_ids(&app.collect_pages("/v1/feed", &waits).await),
        vec![bobs.id.clone()]
    );
    let profile = app.get_user(&bob.id, &waits).await;
    assert_eq!(profile.body["follower_count"], 0, "{profile}");
    assert_eq!(profile.body["likes_received"], 0, "{profile}");
    app.publish(&victim.token, "after")
        .await
        .assert_problem(401, "unauthorized");
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_running_while_a_user_is_erased_agrees_with_the_live_read_models() {
    // Arrange: some history, so that the rebuild takes a while.
    let app = Arc::new(TestApp::spawn().await);
    let (users, posts) = seed(&app, 10, 5).await;
    let victim = users[0].clone();
    let mut positions = Vec::new();
    for (user, post) in users.iter().skip(1).zip(&posts) {
        positions.push(
            app.like(&user.token, &post.id, NO_POSITIONS)
                .await
                .str_field("position"),
        );
        positions.push(
            app.follow(&user.token, &victim.id, NO_POSITIONS)
                .await
                .str_field("position"),
        );
    }
    app.wait_for(&positions).await;

    // Act: the rebuild starts; the victim is erased while it runs.
    let rebuild = tokio::spawn({
        let app = app.clone();
        async move { app.projector_cli(&["rebuild"]).await }
    });
    let db = app.db().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let building: i64 = db
            .query_one(
                "SELECT count(*) FROM projection.generations WHERE state = 'building'",
                &[],
            )
            .await
            .expect("generations")
            .get(0);
        if building > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !rebuild.is_finished(),
            "the rebuild did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let erased = app.erase(&victim.token, PASSWORD).await;
    erased.assert_status(202);
    let during = !rebuild.is_finished();
    let (rebuilt, out, err) = rebuild.await.expect("the rebuild task");
    println!("erased while the rebuild was still running: {during}\n{out}");

    // Assert: the rebuild compared equal and switched; the victim is gone from what it serves.
    assert!(rebuilt, "the rebuild failed:\n{out}\n{err}");
    assert!(out.contains("hold the same read models"), "{out}");
    let at = [erased.str_field("position")];
    app.get_user(&victim.id, &at)
        .await
        .assert_problem(404, "user_not_found");
    let mut model_ops: Vec<Op> = Vec::new();
    for post in &posts {
        model_ops.push(Op::Publish {
            post: post.id.clone(),
            author: post.author.clone(),
        });
    }
    for (user, post) in users.iter().skip(1).zip(&posts) {
        model_ops.push(Op::Like {
            user: user.id.clone(),
            post: post.id.clone(),
        });
        model_ops.push(Op::Follow {
            follower: user.id.clone(),
            followee: victim.id.clone(),
        });
    }
    model_ops.push(Op::Erase {
        user: victim.id.clone(),
    });
    let model = expected(&users, &[], &model_ops);
    app.wait_for(&at).await;
    assert_read_models(&app, &model).await;
}
