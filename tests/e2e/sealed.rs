//! Personal data in the log: sealed under its user's data key (events/src/personal.rs), so that
//! the raw topic (every partition, every byte: keys, headers, payloads) holds none of it, while
//! the read models, which the projector builds with the keys, show all of it.
//!
//! Events written before sealing existed (such as the `v1-history` fixture's) hold their
//! personal fields in plaintext, and keep them: the log is not rewritten. This test writes only
//! new events, so it finds none.

use serde_json::json;

use crate::harness::{NO_POSITIONS, TestApp, with_positions};

/// The personal strings of the test, each distinctive enough to appear nowhere by chance.
const HANDLE: &str = "qx_zanzibar";
const DISPLAY_NAME: &str = "Quixotic Zebra";
const BIO: &str = "Lives by the Vltava";
const NEW_NAME: &str = "Ultramarine Ocelot";
const BODY: &str = "The periwinkle manifesto";
const REPLY: &str = "A marginal note on gooseberries";

#[tokio::test]
async fn personal_fields_are_sealed_in_the_log_and_shown_by_the_read_models() {
    // Arrange and act: a registration, a profile update, a post and a reply.
    let app = TestApp::spawn().await;
    let registered = app
        .register_with(json!({ "handle": HANDLE, "display_name": DISPLAY_NAME, "bio": BIO }))
        .await;
    registered.assert_status(201);
    let (user, token) = (
        registered.str_field("user_id"),
        registered.str_field("token"),
    );
    let mut positions = vec![registered.str_field("position")];
    let updated = app
        .update_profile(&token, json!({ "display_name": NEW_NAME }))
        .await;
    updated.assert_status(202);
    positions.push(updated.str_field("position"));
    let post = app.publish(&token, BODY).await;
    post.assert_status(202);
    let post_id = post.str_field("post_id");
    positions.push(post.str_field("position"));
    let reply = app
        .send(with_positions(
            app.command(reqwest::Method::POST, "/v1/posts")
                .bearer_auth(&token)
                .json(&json!({ "body": REPLY, "reply_to": post_id })),
            &positions,
        ))
        .await;
    reply.assert_status(202);
    positions.push(reply.str_field("position"));
    app.wait_for(&positions).await;

    // Assert: the read models show every field, opened.
    let profile = app.get_user(&user, NO_POSITIONS).await;
    profile.assert_status(200);
    assert_eq!(
        (
            profile.body["handle"].as_str(),
            profile.body["display_name"].as_str(),
            profile.body["bio"].as_str()
        ),
        (Some(HANDLE), Some(NEW_NAME), Some(BIO))
    );
    let shown = app.get_post(&post_id, NO_POSITIONS).await;
    assert_eq!(shown.body["body"].as_str(), Some(BODY));
    let found = app
        .get("/v1/search/posts?q=gooseberries", NO_POSITIONS)
        .await;
    found.assert_status(200);
    assert_eq!(
        found.page_items().len(),
        1,
        "search reads opened bodies: {found}"
    );

    // Assert: the raw log holds none of them, in any case.
    let records = app.whole_topic().await;
    assert_eq!(records.len(), 4, "the four events");
    let bytes: usize = records.iter().map(Vec::len).sum();
    let mut shown = Vec::new();
    for secret in [HANDLE, DISPLAY_NAME, BIO, NEW_NAME, BODY, REPLY] {
        for form in [
            secret.to_owned(),
            secret.to_lowercase(),
            secret.to_uppercase(),
        ] {
            let needle = form.as_bytes();
            if records
                .iter()
                .any(|record| record.windows(needle.len()).any(|w| w == needle))
            {
                shown.push(form);
            }
        }
    }
    println!(
        "raw-log scan: {} records, {bytes} bytes, every partition: {} of 6 personal strings \
         found; events written before sealing would hold theirs in plaintext (none here)",
        records.len(),
        shown.len()
    );
    assert!(shown.is_empty(), "the raw log shows {shown:?}");
}
