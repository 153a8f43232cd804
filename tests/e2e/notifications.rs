//! Notifications: likes, follows and replies notify the user they concern, never the actor
//! themselves; an unlike, unfollow or deletion withdraws its notification; marking read moves a
//! watermark; only the bearer of the recipient's token reads them.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use chronicle_events::{Envelope, Event, PostPublished};

use crate::harness::{NO_POSITIONS, Resp, TestApp, TestPost, TestUser};

/// `GET /v1/me/notifications` as `user`, at `positions`: the items, asserting 200.
async fn notifications(app: &TestApp, user: &TestUser, positions: &[String]) -> Vec<Value> {
    let resp = read_as(app, "/v1/me/notifications", &user.token, positions).await;
    resp.assert_status(200);
    resp.page_items()
}

/// `GET /v1/me/notifications/unread-count` as `user`, at `positions`.
async fn unread(app: &TestApp, user: &TestUser, positions: &[String]) -> u64 {
    let resp = read_as(
        app,
        "/v1/me/notifications/unread-count",
        &user.token,
        positions,
    )
    .await;
    resp.assert_status(200);
    resp.u64_field("count")
}

async fn read_as(app: &TestApp, path: &str, token: &str, positions: &[String]) -> Resp {
    let request = crate::harness::with_positions(app.query(path).bearer_auth(token), positions);
    app.send(request).await
}

/// `POST /v1/me/notifications/read`.
async fn mark_read(app: &TestApp, token: &str, body: Value) -> Resp {
    app.send(
        app.command(Method::POST, "/v1/me/notifications/read")
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// (kind, actor, post) of each item, in the order shown.
fn summary(items: &[Value]) -> Vec<(String, String, Option<String>)> {
    items
        .iter()
        .map(|item| {
            (
                item["kind"].as_str().expect("kind").to_owned(),
                item["actor"]["user_id"].as_str().expect("actor").to_owned(),
                item["post_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// A reply to `parent` by `author`, asserting 202.
async fn reply(app: &TestApp, author: &TestUser, parent: &str, positions: &[String]) -> Resp {
    let request = app
        .command(Method::POST, "/v1/posts")
        .bearer_auth(&author.token)
        .json(&json!({ "body": "a reply", "reply_to": parent }));
    let resp = app
        .send(crate::harness::with_positions(request, positions))
        .await;
    resp.assert_status(202);
    resp
}

/// Alice, Bob and Carol, and a post of Alice's.
struct Scene {
    app: TestApp,
    alice: TestUser,
    bob: TestUser,
    carol: TestUser,
    /// The three registrations' positions.
    users: Vec<String>,
    post: TestPost,
    /// `users` and the post's position.
    at_post: Vec<String>,
}

impl Scene {
    async fn new() -> Scene {
        let app = TestApp::spawn().await;
        let alice = app.register_user("alice", "Alice").await;
        let bob = app.register_user("bob", "Bob").await;
        let carol = app.register_user("carol", "Carol").await;
        let users = vec![
            alice.position.clone(),
            bob.position.clone(),
            carol.position.clone(),
        ];
        let post = app.publish_post(&alice, "hello").await;
        let at_post = [&users[..], std::slice::from_ref(&post.position)].concat();
        Scene {
            app,
            alice,
            bob,
            carol,
            users,
            post,
            at_post,
        }
    }
}

#[tokio::test]
async fn likes_follows_and_replies_notify_the_user_they_concern_until_withdrawn() {
    let Scene {
        app,
        alice,
        bob,
        carol,
        users,
        post,
        at_post,
    } = Scene::new().await;

    // Act: three acts of others, and two of alice's on her own post, which notify nobody.
    let liked = app.like(&bob.token, &post.id, &at_post).await;
    liked.assert_status(202);
    let followed = app.follow(&carol.token, &alice.id, &users).await;
    followed.assert_status(202);
    let replied = reply(&app, &bob, &post.id, &at_post).await;
    let reply_id = replied.str_field("post_id");
    let own_like = app.like(&alice.token, &post.id, &at_post).await;
    own_like.assert_status(202);
    let own_reply = reply(&app, &alice, &post.id, &at_post).await;
    let mut all = at_post.clone();
    for resp in [&liked, &followed, &replied, &own_like, &own_reply] {
        all.push(resp.str_field("position"));
    }

    // Assert: newest first, each as the list shows it.
    let items = notifications(&app, &alice, &all).await;
    assert_eq!(
        summary(&items),
        [
            ("replied".to_owned(), bob.id.clone(), Some(reply_id.clone())),
            ("followed".to_owned(), carol.id.clone(), None),
            ("liked".to_owned(), bob.id.clone(), Some(post.id.clone())),
        ],
        "{items:#?}"
    );
    for item in &items {
        assert_eq!(item["read"], false, "{item}");
        assert!(
            item["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(item["actor"]["handle"].is_string() && item["actor"]["display_name"].is_string());
    }
    assert_eq!(unread(&app, &alice, &all).await, 3);
    // Nobody else is told, and alice's own acts notified nobody.
    assert!(notifications(&app, &bob, &all).await.is_empty());
    assert!(notifications(&app, &carol, &all).await.is_empty());

    // Act: each act undone.
    let mut undone = all.clone();
    for resp in [
        app.unlike(&bob.token, &post.id, &all).await,
        app.unfollow(&carol.token, &alice.id, &all).await,
        app.delete_post(&bob.token, &reply_id, &all).await,
    ] {
        resp.assert_status(202);
        undone.push(resp.str_field("position"));
    }

    // Assert: withdrawn.
    assert_eq!(
        notifications(&app, &alice, &undone).await,
        Vec::<Value>::new()
    );
    assert_eq!(unread(&app, &alice, &undone).await, 0);

    // A like again notifies again; deleting the post withdraws it.
    let again = app.like(&bob.token, &post.id, &undone).await;
    again.assert_status(202);
    let at_again = [&undone[..], &[again.str_field("position")]].concat();
    assert_eq!(notifications(&app, &alice, &at_again).await.len(), 1);
    let deleted = app.delete_post(&alice.token, &post.id, &at_again).await;
    deleted.assert_status(202);
    let at_deleted = [&at_again[..], &[deleted.str_field("position")]].concat();
    assert!(notifications(&app, &alice, &at_deleted).await.is_empty());
}

#[tokio::test]
async fn marking_read_covers_a_notification_and_every_older_one_and_never_unreads() {
    let Scene {
        app,
        alice,
        bob,
        carol,
        users,
        post,
        at_post,
    } = Scene::new().await;
    let liked = app.like(&bob.token, &post.id, &at_post).await;
    liked.assert_status(202);
    let followed = app.follow(&carol.token, &alice.id, &users).await;
    followed.assert_status(202);
    let at = [
        &at_post[..],
        &[liked.str_field("position"), followed.str_field("position")],
    ]
    .concat();
    let items = notifications(&app, &alice, &at).await;
    assert_eq!(items.len(), 2, "{items:#?}");
    let (newer, older) = (
        items[0]["notification_id"].as_str().expect("id").to_owned(),
        items[1]["notification_id"].as_str().expect("id").to_owned(),
    );

    // Act: read up to the older one.
    let first = mark_read(&app, &alice.token, json!({ "up_to": older })).await;
    first.assert_status(202);
    let at_first = [&at[..], &[first.str_field("position")]].concat();

    // Assert: it is read, the newer one is not.
    let items = notifications(&app, &alice, &at_first).await;
    let read: Vec<(&str, bool)> = items
        .iter()
        .map(|i| {
            (
                i["notification_id"].as_str().expect("id"),
                i["read"].as_bool().expect("read"),
            )
        })
        .collect();
    assert_eq!(read, [(newer.as_str(), false), (older.as_str(), true)]);
    assert_eq!(unread(&app, &alice, &at_first).await, 1);

    // Act: everything read, then the older one named again.
    let all = mark_read(&app, &alice.token, json!({ "up_to": newer })).await;
    all.assert_status(202);
    let back = mark_read(&app, &alice.token, json!({ "up_to": older })).await;
    back.assert_status(202);
    let at_end = [
        &at_first[..],
        &[all.str_field("position"), back.str_field("position")],
    ]
    .concat();

    // Assert: a read never becomes unread; and bob's reads are his own.
    assert_eq!(unread(&app, &alice, &at_end).await, 0);
    let items = notifications(&app, &alice, &at_end).await;
    assert!(items.iter().all(|i| i["read"] == true), "{items:#?}");

    // Bad requests are refused, and change nothing.
    mark_read(&app, &alice.token, json!({ "up_to": "not-a-uuid" }))
        .await
        .assert_status(400);
    mark_read(&app, &alice.token, json!({ "up_to": newer, "extra": 1 }))
        .await
        .assert_problem(400, "invalid_body");
    mark_read(&app, &alice.token, json!({}))
        .await
        .assert_status(400);
    mark_read(&app, "not-a-token", json!({ "up_to": newer }))
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn only_the_bearer_of_a_valid_token_reads_notifications() {
    let app = TestApp::spawn().await;
    for path in ["/v1/me/notifications", "/v1/me/notifications/unread-count"] {
        app.send(app.query(path))
            .await
            .assert_problem(401, "unauthorized");
        read_as(&app, path, "not-a-token", NO_POSITIONS)
            .await
            .assert_problem(401, "unauthorized");
        // Signed with a key the query API does not know.
        let now = chrono::Utc::now().timestamp();
        let claims = json!({ "sub": Uuid::now_v7(), "iat": now, "exp": now + 60 });
        let foreign = crate::harness::TokenKey::generate(
            app.key_dir(),
            "foreign",
            &mut crate::harness::Rng::from_entropy(),
        )
        .sign(&claims);
        read_as(&app, path, &foreign, NO_POSITIONS)
            .await
            .assert_problem(401, "unauthorized");
        // Expired.
        let expired =
            app.sign_token(&json!({ "sub": Uuid::now_v7(), "iat": now - 7200, "exp": now - 3600 }));
        read_as(&app, path, &expired, NO_POSITIONS)
            .await
            .assert_problem(401, "unauthorized");
    }
    // A valid token, signed and unexpired, but of no session (never issued): refused.
    let sessionless = app.token_for(&Uuid::now_v7().to_string());
    read_as(&app, "/v1/me/notifications", &sessionless, NO_POSITIONS)
        .await
        .assert_problem(401, "unauthorized");
    // A valid token of a user with nothing yet: an empty list, 0 unread; bad paging is a 400.
    let token = app.register_user("nobody_yet", "Nobody").await.token;
    let resp = read_as(&app, "/v1/me/notifications", &token, NO_POSITIONS).await;
    resp.assert_status(200);
    assert_eq!(resp.body, json!({ "items": [], "next_cursor": null }));
    read_as(&app, "/v1/me/notifications?limit=0", &token, NO_POSITIONS)
        .await
        .assert_problem(400, "validation_failed");
    read_as(
        &app,
        "/v1/me/notifications?cursor=nope",
        &token,
        NO_POSITIONS,
    )
    .await
    .assert_problem(400, "invalid_cursor");
}

#[tokio::test]
async fn a_reply_applied_before_its_parent_notifies_once_the_parent_is_applied() {
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;
    let users = [alice.position.clone(), bob.position.clone()];
    app.wait_for(&users).await;
    let alice_id: Uuid = alice.id.parse().expect("a uuid");
    let bob_id: Uuid = bob.id.parse().expect("a uuid");
    let (parent, child) = (Uuid::now_v7(), Uuid::now_v7());
    let published = |post_id: Uuid, author_id: Uuid, reply_to: Option<Uuid>| {
        Envelope::new(
            author_id,
            Event::PostPublished(PostPublished {
                post_id,
                author_id,
                body: "hello".into(),
                reply_to,
            }),
        )
        .to_json()
    };

    // Act: the reply goes into the log, and is applied, before its parent.
    let reply_at = app
        .produce_raw(
            &child.to_string(),
            None,
            &published(child, bob_id, Some(parent)),
        )
        .await;
    app.wait_for(std::slice::from_ref(&reply_at)).await;
    assert!(
        notifications(&app, &alice, std::slice::from_ref(&reply_at))
            .await
            .is_empty()
    );
    let parent_at = app
        .produce_raw(
            &parent.to_string(),
            None,
            &published(parent, alice_id, None),
        )
        .await;

    // Assert: the notification appears with the parent.
    let items = notifications(&app, &alice, &[reply_at, parent_at]).await;
    assert_eq!(
        summary(&items),
        [(
            "replied".to_owned(),
            bob.id.clone(),
            Some(child.to_string())
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_notifies_every_reply_whatever_order_its_partitions_apply_in() {
    // Arrange: pairs of a post and a reply to it, each by users of their own, spread over the
    // partitions. Live, a parent is always applied before its reply (the command API checks
    // that it exists). A rebuild applies the partitions side by side, so a reply's batch and
    // its parent's run at the same time, and (their authors being different users) share no
    // counter row that would make them take turns.
    let app = TestApp::builder().partitions(8).spawn().await;
    const PAIRS: usize = 40;
    let mut positions = Vec::new();
    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let author = app.register_user(&format!("author{i}"), "Author").await;
        let replier = app.register_user(&format!("replier{i}"), "Replier").await;
        positions.extend([author.position.clone(), replier.position.clone()]);
        pairs.push((author, replier));
    }
    let mut posts = Vec::with_capacity(PAIRS);
    for (author, _) in &pairs {
        let post = app.publish_post(author, "a question").await;
        positions.push(post.position.clone());
        posts.push(post);
    }
    for ((_, replier), post) in pairs.iter().zip(&posts) {
        let at = [&positions[..], std::slice::from_ref(&post.position)].concat();
        positions.push(
            reply(&app, replier, &post.id, &at)
                .await
                .str_field("position"),
        );
    }
    app.wait_for(&positions).await;
    for (author, _) in &pairs {
        assert_eq!(unread(&app, author, NO_POSITIONS).await, 1);
    }

    // Act: rebuild; it refuses to switch if the new generation differs from the live one.
    let (rebuilt, out, err) = app.projector_cli(&["rebuild"]).await;

    // Assert
    assert!(rebuilt, "projector rebuild failed:\n{out}\n{err}");
    assert!(out.contains("notifications"), "{out}");
    for (author, replier) in &pairs {
        let items = notifications(&app, author, NO_POSITIONS).await;
        assert_eq!(summary(&items).len(), 1, "{items:#?}");
        assert_eq!(items[0]["actor"]["user_id"], replier.id.as_str());
    }
}
