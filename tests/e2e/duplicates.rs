//! An event that lands in the log twice (a command retried with its Idempotency-Key after the
//! first answer was lost appends the same envelope again) affects the read models once.

use std::time::{Duration, Instant};

use rdkafka::message::Message;

use crate::dead_letters::partition_of;
use crate::harness::TestApp;

/// The raw bytes of the first message on `partition` whose JSON has this `type`.
async fn message_of_type(app: &TestApp, partition: i32, event_type: &str) -> Vec<u8> {
    let consumer = app.topic_reader("copier");
    let topic = app.topic.clone();
    let event_type = event_type.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.expect("readable message");
            let payload = message.payload().unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            if message.partition() == partition && json["type"] == event_type.as_str() {
                return payload.to_vec();
            }
        }
        panic!("no {event_type} on {topic}/{partition} within 30s");
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_appended_twice_is_applied_once() {
    // Arrange: a like, then its unlike, both applied.
    let app = TestApp::spawn().await;
    let author = app.register_user("author", "Author").await;
    let fan = app.register_user("fan", "Fan").await;
    let other = app.register_user("other", "Other").await;
    let post = app.publish_post(&author, "liked, unliked").await;
    let liked = app
        .like(&fan.token, &post.id, std::slice::from_ref(&post.position))
        .await;
    liked.assert_status(202);
    let unliked = app
        .send(
            app.command(
                reqwest::Method::DELETE,
                &format!("/v1/posts/{}/like", post.id),
            )
            .bearer_auth(&fan.token),
        )
        .await;
    unliked.assert_status(202);
    app.wait_for(&[unliked.str_field("position")]).await;

    // Act: the like's exact envelope lands again behind the unlike, then a later event.
    let partition = partition_of(&app, &post.id).await;
    let like_bytes = message_of_type(&app, partition, "PostLiked").await;
    app.produce_raw(&post.id, Some(partition), &like_bytes)
        .await;
    let later = app
        .like(&other.token, &post.id, std::slice::from_ref(&post.position))
        .await;
    later.assert_status(202);
    let after = vec![
        author.position.clone(),
        fan.position.clone(),
        other.position.clone(),
        later.str_field("position"),
    ];

    // Assert: the copy changed nothing; only the later like counts.
    let read = app.get_post(&post.id, &after).await;
    read.assert_status(200);
    assert_eq!(read.u64_field("like_count"), 1);
    assert_eq!(
        app.get_user(&fan.id, &after).await.u64_field("likes_given"),
        0
    );
    assert_eq!(
        app.get_user(&author.id, &after)
            .await
            .u64_field("likes_received"),
        1
    );
    app.assert_services_alive();
}
