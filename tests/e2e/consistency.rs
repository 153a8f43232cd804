//! Read-your-writes through positions: a read that names the positions of the writes it depends
//! on sees them, a read the projector cannot serve in time is a 503 `stale_read`, and malformed
//! positions are rejected.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{NO_POSITIONS, TestApp, with_positions};

#[tokio::test(flavor = "multi_thread")]
async fn a_read_with_the_positions_of_its_writes_sees_them() {
    // Arrange: a generous wait, so a loaded machine does not turn into a 503; and a projector
    // that already owns its partitions.
    let app = TestApp::builder().consistency_wait_ms(10_000).spawn().await;
    let warm_up = app.register_user("warm_up", "Warm Up").await;
    app.wait_for(std::slice::from_ref(&warm_up.position)).await;

    for i in 0..20 {
        // Act: write, then read immediately with the positions.
        let user = app
            .register_user(&format!("reader_{i}"), &format!("Reader {i}"))
            .await;
        let post = app
            .publish_post(&user, &format!("my post number {i}"))
            .await;
        let positions = [user.position.clone(), post.position.clone()];
        let resp = app.get_post(&post.id, &positions).await;

        // Assert
        resp.assert_status(200);
        assert_eq!(resp.str_field("post_id"), post.id);
        assert_eq!(resp.str_field("body"), format!("my post number {i}"));
        assert_eq!(
            resp.body.pointer("/author/user_id").and_then(Value::as_str),
            Some(user.id.as_str())
        );
        let feed = app
            .get(&format!("/v1/users/{}/posts", user.id), &positions)
            .await;
        feed.assert_status(200);
        assert_eq!(
            feed.page_items().len(),
            1,
            "author feed of reader_{i}: {feed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_positions_are_rejected() {
    // Arrange
    let app = TestApp::spawn().await;
    let user = app.register_user("positioned", "Positioned").await;
    let post = app.publish_post(&user, "a post").await;

    for garbage in ["not a position!", "%%%", "🙂"] {
        let bad = vec![garbage.to_owned()];
        let mixed = vec![post.position.clone(), garbage.to_owned()];
        // Act / Assert: queries.
        app.get("/v1/feed", &bad)
            .await
            .assert_problem(400, "invalid_position");
        app.get_post(&post.id, &mixed)
            .await
            .assert_problem(400, "invalid_position");
        app.get_user(&user.id, &bad)
            .await
            .assert_problem(400, "invalid_position");
        // Commands that check the read models.
        app.like(&user.token, &post.id, &bad)
            .await
            .assert_problem(400, "invalid_position");
        app.delete_post(&user.token, &post.id, &mixed)
            .await
            .assert_problem(400, "invalid_position");
        // A publish reads its positions only to wait for the post it replies to, and still
        // refuses malformed ones when it replies to nothing.
        for body in [
            json!({ "body": "a reply", "reply_to": post.id }),
            json!({ "body": "not a reply" }),
        ] {
            app.send(with_positions(
                app.command(Method::POST, "/v1/posts")
                    .bearer_auth(&user.token)
                    .json(&body),
                &bad,
            ))
            .await
            .assert_problem(400, "invalid_position");
        }
    }
    // The command API's own positions are of course well-formed.
    let resp = app
        .send(with_positions(
            app.command(Method::PUT, &format!("/v1/posts/{}/like", post.id))
                .bearer_auth(&user.token),
            &[user.position.clone(), post.position.clone()],
        ))
        .await;
    resp.assert_status(202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_the_projector_cannot_reach_is_a_stale_read_until_it_can() {
    // Arrange: a short wait, and a projector that has caught up once.
    let app = TestApp::builder().consistency_wait_ms(300).spawn().await;
    let user = app.register_user("stale", "Stale").await;
    let first = app.publish_post(&user, "before the crash").await;
    app.wait_for(&[user.position.clone(), first.position.clone()])
        .await;

    // Act: with the projector dead, the command API still accepts writes...
    app.kill_projector();
    let second = app.publish_post(&user, "while the projector is down").await;
    let positions = [user.position.clone(), second.position.clone()];

    // Assert: ...but a read (or a checking command) that needs them is a 503 stale_read.
    let stale = app.get_post(&second.id, &positions).await;
    stale.assert_problem(503, "stale_read");
    let retry_after = stale
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {stale:?}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After {retry_after:?} is not a number of seconds"
    );
    app.like(&user.token, &first.id, &positions)
        .await
        .assert_problem(503, "stale_read");
    // Without positions nothing waits: the old post is there, the new one is not (yet).
    app.get_post(&first.id, NO_POSITIONS)
        .await
        .assert_status(200);
    app.get_post(&second.id, NO_POSITIONS)
        .await
        .assert_problem(404, "post_not_found");

    // Act: a new projector catches up.
    app.restart_projector().await;
    app.wait_for_within(&positions, Duration::from_secs(90))
        .await;

    // Assert: the same read now succeeds.
    let fresh = app.get_post(&second.id, &positions).await;
    fresh.assert_status(200);
    assert_eq!(fresh.str_field("body"), "while the projector is down");
}
