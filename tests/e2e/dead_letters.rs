//! Poison messages on the topic are recorded in `projection.dead_letters`, together with every
//! later event of the same key (they must not overtake it), while other keys keep flowing.

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

/// An envelope as the wire carries it, for `aggregate`, written by `actor`.
fn raw_envelope(
    event_type: &str,
    version: u32,
    actor: &str,
    aggregate: &str,
    data: serde_json::Value,
) -> Vec<u8> {
    json!({
        "event_id": uuid::Uuid::now_v7(),
        "type": event_type,
        "schema_version": version,
        "occurred_at": "2026-11-26T09:30:00.123Z",
        "actor": actor,
        "aggregate_id": aggregate,
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// A message the projector cannot decode, of each kind, about `post`; each with the words its
/// dead letter's error must contain.
fn poison(post: &TestPost, kind: usize) -> (&'static str, Vec<u8>) {
    let envelope = |event_type: &str, version: u32, data: serde_json::Value| {
        raw_envelope(event_type, version, &post.author, &post.id, data)
    };
    match kind {
        0 => (
            "not a valid event envelope",
            b"\xff\xfe\x00 this is not JSON {".to_vec(),
        ),
        1 => (
            "PostTeleported",
            envelope(
                "PostTeleported",
                1,
                json!({"post_id": post.id, "destination": "mars"}),
            ),
        ),
        2 => (
            "schema version 99",
            envelope(
                "PostLiked",
                99,
                json!({"post_id": post.id, "user_id": post.author}),
            ),
        ),
        // A like without its user.
        _ => (
            "user_id",
            envelope("PostLiked", 1, json!({"post_id": post.id})),
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_holds_back_later_events_of_its_key_while_other_keys_flow() {
    // Arrange: four projected posts, and on each post's partition, keyed like it, one message
    // the projector cannot decode: garbage bytes, an unknown type, a future schema version,
    // valid JSON missing a field.
    let app = TestApp::spawn().await;
    let author = app.register_user("author", "Author").await;
    let fan = app.register_user("fan", "Fan").await;
    let mut posts = Vec::new();
    for n in 0..4 {
        posts.push(
            app.publish_post(&author, &format!("poison follows {n}"))
                .await,
        );
    }
    let healthy = app.publish_post(&author, "nothing wrong here").await;
    let mut settled = vec![author.position.clone(), fan.position.clone()];
    settled.extend(posts.iter().map(|p| p.position.clone()));
    settled.push(healthy.position.clone());
    app.wait_for(&settled).await;
    let mut partitions = Vec::new();
    for (kind, post) in posts.iter().enumerate() {
        let partition = partition_of(&app, &post.id).await;
        partitions.push(partition);
        app.produce_raw(&post.id, Some(partition), &poison(post, kind).1)
            .await;
    }
    // Another key on the first poisoned partition, behind the poison.
    let bystander = uuid::Uuid::now_v7().to_string();
    let published = raw_envelope(
        "PostPublished",
        2,
        &author.id,
        &bystander,
        json!({"post_id": bystander, "author_id": author.id, "body": "same partition, other key", "reply_to": null}),
    );
    app.produce_raw(&bystander, Some(partitions[0]), &published)
        .await;

    // Act: the fan likes every poisoned post (each like lands behind its poison) and the
    // healthy one.
    let mut after = settled.clone();
    for post in posts.iter().chain([&healthy]) {
        let liked = app.like(&fan.token, &post.id, &settled).await;
        liked.assert_status(202);
        after.push(liked.str_field("position"));
    }
    app.wait_for(&after).await;

    // Assert: other keys flowed, on the poisoned partition too...
    assert_eq!(
        app.get_post(&healthy.id, &after)
            .await
            .u64_field("like_count"),
        1
    );
    app.get_post(&bystander, &after).await.assert_status(200);
    assert_eq!(
        app.get_user(&fan.id, &after).await.u64_field("likes_given"),
        1
    );
    // ...while every like of a poisoned post waits behind its poison.
    for post in &posts {
        assert_eq!(
            app.get_post(&post.id, &after).await.u64_field("like_count"),
            0
        );
    }

    // Each poison is recorded once, with why, and holds its like back.
    let db = app.db().await;
    let rows = db
        .query(
            "SELECT key, partition, error FROM projection.dead_letters ORDER BY \"offset\"",
            &[],
        )
        .await
        .expect("failed to read projection.dead_letters");
    assert_eq!(rows.len(), 8, "dead letters: {rows:?}");
    for ((kind, post), partition) in posts.iter().enumerate().zip(&partitions) {
        let of_post: Vec<(i32, String)> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(0).as_deref() == Some(post.id.as_str()))
            .map(|row| (row.get(1), row.get(2)))
            .collect();
        assert_eq!(of_post.len(), 2, "dead letters of post {kind}: {of_post:?}");
        let (words, _) = poison(post, kind);
        assert_eq!(of_post[0].0, *partition);
        assert!(
            of_post[0].1.contains(words),
            "poison {kind}: {}",
            of_post[0].1
        );
        assert!(
            of_post[1].1.starts_with("held"),
            "like {kind}: {}",
            of_post[1].1
        );
    }
    let (ok, listed, stderr) = app.projector_cli(&["dead-letters", "list"]).await;
    assert!(ok, "list failed: {stderr}");
    assert_eq!(listed.matches("[open]").count(), 4, "{listed}");
    assert_eq!(listed.matches("[held]").count(), 4, "{listed}");

    // A held event cannot be decided before the one holding it.
    let ids: Vec<String> = db
        .query(
            "SELECT id::text FROM projection.dead_letters WHERE key = $1 ORDER BY \"offset\"",
            &[&posts[0].id],
        )
        .await
        .expect("failed to read projection.dead_letters")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let (poisoned, held) = (&ids[0], &ids[1]);
    let (ok, _, stderr) = app.projector_cli(&["dead-letters", "retry", held]).await;
    assert!(!ok && stderr.contains("held behind"), "{stderr}");

    // Skipping the poison releases the like behind it.
    let (ok, out, stderr) = app.projector_cli(&["dead-letters", "skip", poisoned]).await;
    assert!(ok, "skip failed: {stderr}");
    assert!(out.contains(&format!("#{held} released")), "{out}");
    assert_eq!(
        app.get_post(&posts[0].id, &after)
            .await
            .u64_field("like_count"),
        1
    );
    assert_eq!(
        app.get_user(&fan.id, &after).await.u64_field("likes_given"),
        2
    );
    let (_, listed, _) = app.projector_cli(&["dead-letters", "list"]).await;
    assert_eq!(listed.matches("[open]").count(), 3, "{listed}");
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_cannot_be_applied_is_parked_and_the_rest_of_its_batch_applies() {
    // Arrange: a registration that decodes but cannot be applied (its display name holds a
    // NUL character, which PostgreSQL's text cannot store: a data exception) and, behind it, a
    // profile update of the same user.
    let app = TestApp::spawn().await;
    let taken = app.register_user("taken", "Taken").await;
    app.wait_for(std::slice::from_ref(&taken.position)).await;
    let impostor = uuid::Uuid::now_v7().to_string();
    let registered = raw_envelope(
        "UserRegistered",
        1,
        &impostor,
        &impostor,
        json!({"user_id": impostor, "handle": "nul_byte", "display_name": "Nul\u{0}Byte", "bio": ""}),
    );
    let updated = raw_envelope(
        "ProfileUpdated",
        1,
        &impostor,
        &impostor,
        json!({"user_id": impostor, "bio": "held back"}),
    );
    let partition = partition_of(&app, &taken.id).await;
    app.produce_raw(&impostor, Some(partition), &registered)
        .await;
    app.produce_raw(&impostor, Some(partition), &updated).await;

    // Act: an event of another key behind them on their partition.
    let later = app
        .update_profile(&taken.token, json!({ "bio": "still flowing" }))
        .await;
    later.assert_status(202);
    let after = vec![later.str_field("position")];
    app.wait_for(&after).await;

    // Assert: the later event applied; the impostor's two events are parked, in order.
    assert_eq!(
        app.get_user(&taken.id, &after).await.str_field("bio"),
        "still flowing"
    );
    app.get_user(&impostor, &after).await.assert_status(404);
    let rows = app
        .db()
        .await
        .query(
            "SELECT error FROM projection.dead_letters WHERE key = $1 ORDER BY \"offset\"",
            &[&impostor],
        )
        .await
        .expect("failed to read projection.dead_letters");
    let errors: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("could not apply"), "{errors:?}");
    assert!(errors[1].starts_with("held"), "{errors:?}");
    app.assert_services_alive();
}
