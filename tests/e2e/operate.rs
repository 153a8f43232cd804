//! The projector's operator subcommands, through the CLI: `status` and `dead-letters
//! list | retry | skip`.

use serde_json::json;

use crate::dead_letters::partition_of;
use crate::harness::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_retried_and_skipped_and_status_shows_the_lag() {
    // Arrange: two posts and a fan, and two dead letters: garbage keyed like the first post,
    // which no build can decode, and a like of the second post that the projector once failed
    // to apply (recorded by hand, as an older build would have), which applies today.
    let app = TestApp::spawn().await;
    let author = app.register_user("author", "Author").await;
    let fan = app.register_user("fan", "Fan").await;
    let post = app.publish_post(&author, "garbage follows").await;
    let liked = app.publish_post(&author, "retry me").await;
    let partition = partition_of(&app, &post.id).await;
    let liked_partition = partition_of(&app, &liked.id).await;
    app.produce_raw(&post.id, Some(partition), b"\xffnot an event")
        .await;
    let later = app
        .update_profile(&author.token, json!({ "bio": "after the garbage" }))
        .await;
    later.assert_status(202);
    let settled = vec![
        author.position.clone(),
        fan.position.clone(),
        post.position.clone(),
        liked.position.clone(),
        later.str_field("position"),
    ];
    app.wait_for(&settled).await;
    let like = json!({
        "event_id": uuid::Uuid::now_v7(), "type": "PostLiked", "schema_version": 1,
        "occurred_at": "2026-11-26T09:30:00.123Z", "actor": fan.id, "aggregate_id": liked.id,
        "data": {"post_id": liked.id, "user_id": fan.id},
    });
    app.db()
        .await
        .execute(
            "INSERT INTO projection.dead_letters
                 (generation, topic, partition, \"offset\", key, payload, error)
             SELECT name, $1, $2, 1000000, $3, $4, 'an older build could not apply it'
             FROM projection.generations WHERE state = 'active'",
            &[
                &app.topic,
                &liked_partition,
                &liked.id,
                &like.to_string().into_bytes(),
            ],
        )
        .await
        .expect("record a dead letter");

    // Act / Assert: list shows both, ids in order.
    let (ok, listed, stderr) = app.projector_cli(&["dead-letters", "list"]).await;
    assert!(ok, "list failed: {stderr}");
    assert!(
        listed.contains("#1 [open]") && listed.contains("#2 [open]"),
        "{listed}"
    );

    // The garbage still does not decode: retry fails and changes nothing.
    let (ok, _, stderr) = app.projector_cli(&["dead-letters", "retry", "1"]).await;
    assert!(!ok, "retrying garbage must fail");
    assert!(stderr.contains("still cannot be decoded"), "{stderr}");

    // The like applies now.
    let (ok, out, stderr) = app.projector_cli(&["dead-letters", "retry", "2"]).await;
    assert!(ok, "retry failed: {stderr}");
    assert!(out.contains("retried"), "{out}");
    let read = app.get_post(&liked.id, &settled).await;
    assert_eq!(read.u64_field("like_count"), 1);
    assert_eq!(
        app.get_user(&fan.id, &settled)
            .await
            .u64_field("likes_given"),
        1
    );
    let (ok, _, stderr) = app.projector_cli(&["dead-letters", "retry", "2"]).await;
    assert!(!ok && stderr.contains("already resolved"), "{stderr}");

    // Skipping the garbage resolves it; it stays on record.
    let (ok, _, stderr) = app.projector_cli(&["dead-letters", "skip", "1"]).await;
    assert!(ok, "skip failed: {stderr}");
    let (_, open, _) = app.projector_cli(&["dead-letters", "list"]).await;
    assert!(
        open.contains("no dead letters awaiting a decision"),
        "{open}"
    );
    let (_, all, _) = app.projector_cli(&["dead-letters", "list", "--all"]).await;
    assert!(
        all.contains("#1 [skipped]") && all.contains("#2 [retried]"),
        "{all}"
    );

    // Status: every partition caught up, nothing awaiting a decision.
    let (ok, status, stderr) = app.projector_cli(&["status"]).await;
    assert!(ok, "status failed: {stderr}");
    let total = status
        .lines()
        .find(|line| line.trim_start().starts_with("total"))
        .unwrap_or_else(|| panic!("no total line in {status}"));
    assert_eq!(total.split_whitespace().last(), Some("0"), "{status}");
    assert!(
        status.contains("dead letters: 0 awaiting a decision (2 recorded in all)"),
        "{status}"
    );
    // The same, as JSON for scripts.
    let (ok, json, stderr) = app.projector_cli(&["status", "--json"]).await;
    assert!(ok, "status --json failed: {stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|err| panic!("{err}: {json}"));
    assert_eq!(json["total_lag"], 0, "{json}");
    assert_eq!(json["dead_letters"]["open"], 0, "{json}");
    assert_eq!(json["dead_letters"]["recorded"], 2, "{json}");
    let partitions = json["partitions"].as_array().expect("partitions");
    assert!(!partitions.is_empty(), "{json}");
    assert!(
        partitions
            .iter()
            .all(|p| p["lag"] == 0 && p["stored_offset"] == p["high_watermark"]),
        "{json}"
    );
    assert_eq!(json["generations"][0]["state"], "active", "{json}");
    let (ok, _, stderr) = app.projector_cli(&["dead-letters", "skip", "99"]).await;
    assert!(!ok && stderr.contains("no dead letter #99"), "{stderr}");
}
