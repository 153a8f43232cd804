//! Event versions: replies (PostPublished v2) through the API, and every checked-in version-1
//! fixture, produced straight to the log, still decodes and projects.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Resp, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_names_its_parent_and_counts_on_it_until_deleted() {
    // Arrange
    let app = TestApp::spawn().await;
    let author = app.register_user("author", "Author").await;
    let replier = app.register_user("replier", "Replier").await;
    let parent = app.publish_post(&author, "a question").await;
    let reply_to = |parent_id: &str, positions: &[&str]| {
        let query: String = positions
            .iter()
            .map(|p| format!("min_position={p}&"))
            .collect();
        app.command(Method::POST, &format!("/v1/posts?{query}"))
            .bearer_auth(&replier.token)
            .json(&json!({ "body": "an answer", "reply_to": parent_id }))
    };

    // Act
    let reply = app.send(reply_to(&parent.id, &[&parent.position])).await;
    let orphan = app
        .send(reply_to(&uuid::Uuid::now_v7().to_string(), &[]))
        .await;

    // Assert
    reply.assert_status(202);
    orphan.assert_problem(404, "post_not_found");
    let after = vec![
        author.position.clone(),
        replier.position.clone(),
        reply.str_field("position"),
    ];
    let read_parent = app.get_post(&parent.id, &after).await;
    read_parent.assert_status(200);
    assert_eq!(read_parent.u64_field("reply_count"), 1);
    assert_eq!(read_parent.body["reply_to"], Value::Null);
    let read_reply = app.get_post(&reply.str_field("post_id"), &after).await;
    assert_eq!(read_reply.str_field("reply_to"), parent.id);
    assert_eq!(read_reply.u64_field("reply_count"), 0);

    // Act: deleting the reply takes it off its parent's count.
    let deleted = app
        .delete_post(&replier.token, &reply.str_field("post_id"), &after)
        .await;
    deleted.assert_status(202);
    let after = vec![deleted.str_field("position")];
    assert_eq!(
        app.get_post(&parent.id, &after)
            .await
            .u64_field("reply_count"),
        0
    );
}

/// Every version-1 fixture of the events crate, in an order that makes a story, then the
/// version-2 post. They are produced as they are, with their fixed ids.
const FIXTURES: &[&str] = &[
    include_str!("../../events/fixtures/v1/UserRegistered.json"),
    include_str!("../../events/fixtures/v1/ProfileUpdated.json"),
    include_str!("../../events/fixtures/v1/PostPublished.json"),
    include_str!("../../events/fixtures/v1/PostLiked.json"),
    include_str!("../../events/fixtures/v1/PostUnliked.json"),
    include_str!("../../events/fixtures/v1/UserFollowed.json"),
    include_str!("../../events/fixtures/v1/UserUnfollowed.json"),
    include_str!("../../events/fixtures/v2/PostPublished.json"),
    include_str!("../../events/fixtures/v1/PostDeleted.json"),
    include_str!("../../events/fixtures/v1/NotificationsRead.json"),
    include_str!("../../events/fixtures/v1/UserErased.json"),
];

/// Asserts the profile the fixtures give their user Alice (registered, then renamed), read at
/// `positions`; returns it.
async fn assert_fixtures_alice(app: &TestApp, positions: &[String]) -> Resp {
    let alice = app
        .get("/v1/users/0190d0a0-0000-7000-8000-000000000001", positions)
        .await;
    alice.assert_status(200);
    assert_eq!(alice.str_field("handle"), "alice");
    assert_eq!(alice.str_field("display_name"), "Alice A.");
    assert_eq!(alice.str_field("bio"), "Writes about logs.");
    alice
}

#[tokio::test(flavor = "multi_thread")]
async fn version_1_events_still_project() {
    // Arrange: one partition, so a later command's position covers every fixture before it.
    let app = TestApp::builder().partitions(1).spawn().await;
    // Act
    for fixture in FIXTURES {
        app.produce_envelope(fixture).await;
    }
    let later = app.register_user("later", "Later").await;
    let after = vec![later.position.clone()];

    // Assert
    let alice = assert_fixtures_alice(&app, &after).await;
    assert_eq!(alice.str_field("joined_at"), "2026-11-26T09:30:00.123Z");
    assert_eq!(alice.u64_field("post_count"), 1, "{alice}");
    assert_eq!(alice.u64_field("following_count"), 0);
    assert_eq!(alice.u64_field("likes_given"), 0);
    app.get("/v1/users/0190d0a0-0000-7000-8000-000000000002", &after)
        .await
        .assert_problem(404, "user_not_found");
    app.get_post("0190d0a0-0000-7000-8000-0000000000a1", &after)
        .await
        .assert_problem(404, "post_not_found");
    let reply = app
        .get_post("0190d0a0-0000-7000-8000-0000000000a2", &after)
        .await;
    reply.assert_status(200);
    assert_eq!(
        reply.str_field("reply_to"),
        "0190d0a0-0000-7000-8000-0000000000a0"
    );
    let dead: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM projection.dead_letters", &[])
        .await
        .expect("count dead letters")
        .get(0);
    assert_eq!(dead, 0, "a fixture was dead-lettered");
}

/// The sealed fixtures (personal fields encrypted under the fixtures' key, 32 bytes of 7).
const SEALED: &[&str] = &[
    include_str!("../../events/fixtures/v2/UserRegistered.json"),
    include_str!("../../events/fixtures/v2/ProfileUpdated.json"),
    include_str!("../../events/fixtures/v3/PostPublished.json"),
];

#[tokio::test(flavor = "multi_thread")]
async fn sealed_events_project_opened_and_one_without_its_key_is_set_aside() {
    // Arrange: the fixtures' owner has the fixtures' data key; a copy of the sealed post names
    // a key owner who has none.
    let app = TestApp::builder().partitions(1).spawn().await;
    let owner = uuid::Uuid::parse_str("0190d0a0-0000-7000-8000-000000000001").expect("uuid");
    app.db()
        .await
        .execute(
            "INSERT INTO command.data_keys (user_id, key_version, data_key) VALUES ($1, 1, $2)",
            &[&owner, &vec![7u8; 32]],
        )
        .await
        .expect("the fixtures' data key");
    let mut keyless: Value = serde_json::from_str(SEALED[2]).expect("JSON");
    let stranger = uuid::Uuid::now_v7();
    keyless["event_id"] = serde_json::json!(uuid::Uuid::now_v7());
    keyless["aggregate_id"] = serde_json::json!("0190d0a0-0000-7000-8000-0000000000a4");
    keyless["data"]["post_id"] = keyless["aggregate_id"].clone();
    keyless["data"]["body"]["key"] = serde_json::json!(stranger);
    // And one by a user who was erased: their key is gone too, but the command API recorded
    // why, so the post applies with its body forgotten, and their erasure makes it a tombstone.
    let erased = uuid::Uuid::now_v7();
    app.db()
        .await
        .execute(
            "INSERT INTO command.erasures (user_id) VALUES ($1)",
            &[&erased],
        )
        .await
        .expect("record the erasure");
    let mut forgotten: Value = serde_json::from_str(SEALED[2]).expect("JSON");
    forgotten["event_id"] = serde_json::json!(uuid::Uuid::now_v7());
    forgotten["aggregate_id"] = serde_json::json!("0190d0a0-0000-7000-8000-0000000000a5");
    forgotten["actor"] = serde_json::json!(erased);
    forgotten["data"]["post_id"] = forgotten["aggregate_id"].clone();
    forgotten["data"]["author_id"] = serde_json::json!(erased);
    forgotten["data"]["body"]["key"] = serde_json::json!(erased);
    let mut erasure: Value =
        serde_json::from_str(include_str!("../../events/fixtures/v1/UserErased.json"))
            .expect("JSON");
    erasure["event_id"] = serde_json::json!(uuid::Uuid::now_v7());
    for field in ["actor", "aggregate_id"] {
        erasure[field] = serde_json::json!(erased);
    }
    erasure["data"]["user_id"] = serde_json::json!(erased);

    // Act
    for fixture in SEALED {
        app.produce_envelope(fixture).await;
    }
    for event in [&keyless, &forgotten, &erasure] {
        app.produce_envelope(&event.to_string()).await;
    }
    let later = app.register_user("later", "Later").await;
    let after = vec![later.position.clone()];

    // Assert: opened in the read models.
    assert_fixtures_alice(&app, &after).await;
    let post = app
        .get_post("0190d0a0-0000-7000-8000-0000000000a3", &after)
        .await;
    post.assert_status(200);
    assert_eq!(post.str_field("body"), "A sealed reply.");
    // The erased user's post is a tombstone, and no dead letter.
    app.get_post("0190d0a0-0000-7000-8000-0000000000a5", &after)
        .await
        .assert_problem(404, "post_not_found");
    // The keyless post is a dead letter that says why.
    app.get_post("0190d0a0-0000-7000-8000-0000000000a4", &after)
        .await
        .assert_problem(404, "post_not_found");
    let errors: Vec<String> = app
        .db()
        .await
        .query("SELECT error FROM projection.dead_letters", &[])
        .await
        .expect("dead letters")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("the data key of user {stranger} is gone")),
        "{errors:?}"
    );
}
