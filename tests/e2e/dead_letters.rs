//! Poison messages on the topic are recorded in `projection.dead_letters` and skipped: the
//! projector keeps applying the events behind them.

use std::time::{Duration, Instant};

use rdkafka::message::Message;
use serde_json::json;

use crate::harness::{TestApp, TestPost};

/// The partition holding the message keyed `key`, found by reading the topic from the start
/// (so the test does not depend on the producer's partitioner).
pub(crate) async fn partition_of(app: &TestApp, key: &str) -> i32 {
    let consumer = app.topic_reader("inspector");
    let topic = app.topic.clone();
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) if message.key() == Some(key.as_bytes()) => {
                    return message.partition();
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => panic!("reading {topic}: {e}"),
            }
        }
        panic!("no message keyed {key} on {topic} within 30s");
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Three messages the projector cannot decode, for `post`'s partition.
fn poison(post: &TestPost) -> [(&'static str, Vec<u8>); 3] {
    let envelope = |event_type: &str, data: serde_json::Value| {
        json!({
            "event_id": uuid::Uuid::now_v7(),
            "type": event_type,
            "schema_version": 1,
            "occurred_at": "2026-11-26T09:30:00.123Z",
            "actor": post.author,
            "aggregate_id": post.id,
            "data": data,
        })
        .to_string()
        .into_bytes()
    };
    [
        ("garbage bytes", b"\xff\xfe\x00 this is not JSON {".to_vec()),
        (
            "an unknown event type",
            envelope(
                "PostTeleported",
                json!({"post_id": post.id, "destination": "mars"}),
            ),
        ),
        // A like without its user.
        (
            "a payload missing fields",
            envelope("PostLiked", json!({"post_id": post.id})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_events_are_dead_lettered_and_skipped() {
    // Arrange: a projected post, and three poison messages on its partition, keyed like it.
    let app = TestApp::spawn().await;
    let author = app.register_user("author", "Author").await;
    let fan = app.register_user("fan", "Fan").await;
    let post = app.publish_post(&author, "poison follows").await;
    app.wait_for(&[
        author.position.clone(),
        fan.position.clone(),
        post.position.clone(),
    ])
    .await;
    let partition = partition_of(&app, &post.id).await;
    for (_, payload) in poison(&post) {
        app.produce_raw(&post.id, Some(partition), &payload).await;
    }

    // Act: an event behind the poison on the same partition.
    let liked = app
        .like(&fan.token, &post.id, std::slice::from_ref(&post.position))
        .await;
    liked.assert_status(202);
    let after = vec![liked.str_field("position")];
    app.wait_for(&after).await;

    // Assert: the like was applied, so the poison was skipped...
    let read = app.get_post(&post.id, &after).await;
    read.assert_status(200);
    assert_eq!(read.u64_field("like_count"), 1);
    assert_eq!(
        app.get_user(&fan.id, &after).await.u64_field("likes_given"),
        1
    );

    // ...and recorded, each once, with why.
    let db = app.db().await;
    let rows = db
        .query(
            "SELECT partition::bigint, \"offset\"::bigint, error::text FROM projection.dead_letters \
             ORDER BY \"offset\"",
            &[],
        )
        .await
        .expect("failed to read projection.dead_letters");
    assert_eq!(rows.len(), 3, "dead letters: {rows:?}");
    for row in &rows {
        let (dead_partition, error): (i64, String) = (row.get(0), row.get(2));
        assert_eq!(dead_partition, i64::from(partition));
        assert!(!error.trim().is_empty(), "a dead letter without an error");
    }
    let count: i64 = db
        .query_one("SELECT count(*) FROM projection.dead_letters", &[])
        .await
        .expect("failed to count dead letters")
        .get(0);
    assert_eq!(count, 3);
    app.assert_services_alive();
}
