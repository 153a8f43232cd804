//! The upgrade to notifications (projection version 2), the way an operator takes it: the
//! database and log an earlier release wrote (`tests/fixtures/v1-history`, made by the release
//! before notifications through its HTTP API, see its `make`), the new services started on them,
//! then `projector rebuild`. Until the rebuild the old generation keeps serving what it always
//! served, and notifications and search answer 503; after it, notifications of acts from before
//! the upgrade are there, as are those of acts between the upgrade and the rebuild, and search
//! finds what was written before. Live streams (projection version 3) need no rebuild: a
//! generation of version 2 gets them in place.

use serde_json::Value;

use crate::harness::{NO_POSITIONS, TestApp};

/// The fixture's topic had 12 partitions (`CHRONICLE_PARTITIONS` of `script/server`).
const FIXTURE_PARTITIONS: u32 = 12;

/// The user id of `handle`.
async fn user_id(app: &TestApp, handle: &str) -> String {
    let resp = app
        .get(&format!("/v1/users/by-handle/{handle}"), NO_POSITIONS)
        .await;
    resp.assert_status(200);
    resp.str_field("user_id")
}

/// The id of the one live post of `author` whose body is `body`.
async fn post_id(app: &TestApp, author: &str, body: &str) -> String {
    let posts = app
        .collect_pages(&format!("/v1/users/{author}/posts"), NO_POSITIONS)
        .await;
    let found: Vec<&Value> = posts.iter().filter(|p| p["body"] == body).collect();
    assert_eq!(found.len(), 1, "posts of {author}: {posts:#?}");
    found[0]["post_id"].as_str().expect("post_id").to_owned()
}

/// (kind, actor, post) of `user`'s notifications, newest first, with the unread count.
async fn notified(
    app: &TestApp,
    user: &str,
    positions: &[String],
) -> (Vec<(String, String, Option<String>)>, u64) {
    let token = app.token_for(user);
    let list = app
        .send(crate::harness::with_positions(
            app.query("/v1/me/notifications").bearer_auth(&token),
            positions,
        ))
        .await;
    list.assert_status(200);
    let items = list
        .page_items()
        .iter()
        .map(|item| {
            (
                item["kind"].as_str().expect("kind").to_owned(),
                item["actor"]["user_id"].as_str().expect("actor").to_owned(),
                item["post_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let count = app
        .send(
            app.query("/v1/me/notifications/unread-count")
                .bearer_auth(&token),
        )
        .await;
    count.assert_status(200);
    (items, count.u64_field("count"))
}

#[tokio::test]
async fn a_rebuild_fills_notifications_from_the_whole_history_while_the_old_generation_serves() {
    // Arrange: the new services on what the release before them left.
    let app = TestApp::builder()
        .partitions(FIXTURE_PARTITIONS)
        .history("v1-history")
        .spawn()
        .await;
    let (alice, bob, carol) = (
        user_id(&app, "alice").await,
        user_id(&app, "bob").await,
        user_id(&app, "carol").await,
    );
    let hello = post_id(&app, &alice, "Hello from Alice").await;
    let bobs = post_id(&app, &bob, "Bob here").await;
    let reply = post_id(&app, &bob, "Nice one").await;
    let profile_before = app.get_user(&alice, NO_POSITIONS).await;
    profile_before.assert_status(200);
    assert_eq!(profile_before.u64_field("post_count"), 1);
    assert_eq!(profile_before.u64_field("follower_count"), 2);
    assert_eq!(profile_before.u64_field("likes_received"), 2);

    // The old generation serves as before, and says notifications are not built yet.
    let token = app.token_for(&alice);
    app.send(app.query("/v1/me/notifications").bearer_auth(&token))
        .await
        .assert_problem(503, "stale_read");
    let search_hello = || app.send(app.query("/v1/search/posts").query(&[("q", "hello")]));
    search_hello().await.assert_problem(503, "stale_read");
    app.get("/v1/feed/stream", NO_POSITIONS)
        .await
        .assert_problem(503, "stale_read");
    // Commands go on meanwhile: carol likes bob's post on the old generation.
    let liked = app.like(&app.token_for(&carol), &bobs, NO_POSITIONS).await;
    liked.assert_status(202);
    let at_like = [liked.str_field("position")];
    let bobs_post = app.get_post(&bobs, &at_like).await;
    bobs_post.assert_status(200);
    assert_eq!(bobs_post.u64_field("like_count"), 2);

    // Act: the operator rebuilds.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;
    assert!(rebuilt, "projector rebuild failed:\n{out}\n{err}");
    let (_, list, _) = app.projector_cli(&["generations", "list"]).await;
    assert!(
        list.contains("g1\tretired\tprojection code v1\t")
            && list.contains("g2\tactive\tprojection code v4\t"),
        "{list}"
    );

    // Assert: every act of the history notifies as it would have, had notifications existed;
    // alice's like of her own post, carol's withdrawn like and the reply to a deleted post do
    // not.
    let (alices, unread) = notified(&app, &alice, &at_like).await;
    let mut kinds: Vec<(String, String, Option<String>)> = alices.clone();
    kinds.sort();
    let mut expected = vec![
        ("followed".to_owned(), bob.clone(), None),
        ("followed".to_owned(), carol.clone(), None),
        ("liked".to_owned(), bob.clone(), Some(hello.clone())),
        ("replied".to_owned(), bob.clone(), Some(reply.clone())),
    ];
    expected.sort();
    assert_eq!(kinds, expected, "alice's notifications: {alices:?}");
    assert_eq!(unread, 4);
    let (bobs_notifications, unread) = notified(&app, &bob, &at_like).await;
    assert_eq!(
        bobs_notifications,
        [
            ("liked".to_owned(), carol.clone(), Some(bobs.clone())),
            ("liked".to_owned(), alice.clone(), Some(bobs.clone())),
            ("followed".to_owned(), alice.clone(), None),
        ]
    );
    assert_eq!(unread, 3);
    assert_eq!(notified(&app, &carol, &at_like).await, (Vec::new(), 0));
    // Search finds what was written before the upgrade.
    let found = search_hello().await;
    found.assert_status(200);
    assert_eq!(found.page_items().len(), 1, "{found}");
    assert_eq!(found.page_items()[0]["post_id"], hello.as_str());
    let users = app
        .send(app.query("/v1/search/users").query(&[("q", "caro")]))
        .await;
    users.assert_status(200);
    assert_eq!(users.page_items()[0]["user_id"], carol.as_str());
    // Nothing else changed.
    let profile_after = app.get_user(&alice, NO_POSITIONS).await;
    assert_eq!(profile_after.body, profile_before.body);

    // And the live projector goes on in the new layout: a follow after the rebuild notifies,
    // also live.
    let mut bobs_stream = app
        .open_stream(
            "/v1/me/notifications/stream",
            None,
            Some(&app.token_for(&bob)),
        )
        .await;
    let followed = app.follow(&app.token_for(&carol), &bob, NO_POSITIONS).await;
    followed.assert_status(202);
    let (after, unread) = notified(&app, &bob, &[followed.str_field("position")]).await;
    assert_eq!(after[0], ("followed".to_owned(), carol.clone(), None));
    assert_eq!(unread, 4);
    let (event, data) = bobs_stream
        .next_message(std::time::Duration::from_secs(60))
        .await
        .expect("the follow's notification, live");
    assert_eq!(event, "notification");
    assert_eq!(data["actor"]["user_id"], carol.as_str());
}

#[tokio::test]
async fn a_generation_of_version_2_gets_live_streams_in_place_when_the_projector_starts() {
    // Arrange: a generation with read models, as projection version 2 left it: no stream (and
    // no erased users, which version 4 added).
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let before = app.publish_post(&alice, "before streams").await;
    app.wait_for(std::slice::from_ref(&before.position)).await;
    app.kill_projector();
    let db = app.db().await;
    db.batch_execute(
        "DROP TABLE read_g1.stream;
         DROP TABLE read_g1.erased_users;
         DROP INDEX read_g1.posts_erasure;
         DROP INDEX read_g1.likes_erasure;
         DROP INDEX read_g1.notifications_by_actor;
         UPDATE projection.generations SET code_version = 2 WHERE name = 'g1';",
    )
    .await
    .expect("make g1 a generation of version 2");
    app.get("/v1/feed/stream", NO_POSITIONS)
        .await
        .assert_problem(503, "stale_read");

    // Act: the new projector starts.
    app.start_projector().await;

    // Assert: the same generation, now of version 4, keeps its read models and streams what
    // happens from now on.
    let (_, list, _) = app.projector_cli(&["generations", "list"]).await;
    assert!(list.contains("g1\tactive\tprojection code v4\t"), "{list}");
    let mut feed = app.open_stream("/v1/feed/stream", None, None).await;
    let after = app.publish_post(&alice, "after streams").await;
    let (event, data) = feed
        .next_message(std::time::Duration::from_secs(60))
        .await
        .expect("the new post, live");
    assert_eq!(event, "post");
    assert_eq!(data["post_id"], after.id.as_str());
    app.get_post(&before.id, NO_POSITIONS)
        .await
        .assert_status(200);
}
