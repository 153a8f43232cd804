//! Search: posts by full text (web-search syntax, ranked, paged by a stable cursor), users by
//! handle and display name (prefix and typo tolerant); both follow every change.

use serde_json::Value;

use crate::harness::{NO_POSITIONS, Resp, TestApp, post_ids, user_ids};

async fn search(app: &TestApp, what: &str, q: &str, positions: &[String]) -> Resp {
    let request = app.query(&format!("/v1/search/{what}")).query(&[("q", q)]);
    app.send(crate::harness::with_positions(request, positions))
        .await
}

/// The ids found for `q`, in order.
async fn found(app: &TestApp, what: &str, q: &str, positions: &[String]) -> Vec<String> {
    let resp = search(app, what, q, positions).await;
    resp.assert_status(200);
    let items = resp.page_items();
    if what == "posts" {
        post_ids(&items)
    } else {
        user_ids(&items)
    }
}

#[tokio::test]
async fn posts_are_found_by_words_phrases_and_exclusions_and_leave_when_deleted() {
    // Arrange
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let mut at = vec![alice.position.clone()];
    let kafka = app
        .publish_post(
            &alice,
            "Kafka keeps every event; the projector replays the log",
        )
        .await;
    let rust = app
        .publish_post(&alice, "Rust services read the log and write PostgreSQL")
        .await;
    let both = app
        .publish_post(&alice, "Kafka logs and Kafka consumers, Kafka everywhere")
        .await;
    let cats = app.publish_post(&alice, "Pictures of cats").await;
    for p in [&kafka, &rust, &both, &cats] {
        at.push(p.position.clone());
    }

    // Assert: words (stemmed: "replaying" finds "replays"), most relevant first.
    assert_eq!(
        found(&app, "posts", "replaying", &at).await,
        vec![kafka.id.clone()]
    );
    assert_eq!(
        found(&app, "posts", "kafka", &at).await,
        [both.id.clone(), kafka.id.clone()],
        "the post that says Kafka three times ranks first"
    );
    assert_eq!(found(&app, "posts", "log", &at).await.len(), 3);
    // A phrase, an exclusion, an alternative.
    assert_eq!(
        found(&app, "posts", "\"write PostgreSQL\"", &at).await,
        vec![rust.id.clone()]
    );
    assert_eq!(
        found(&app, "posts", "\"PostgreSQL write\"", &at).await,
        Vec::<String>::new()
    );
    let mut log_not_kafka = found(&app, "posts", "log -kafka", &at).await;
    log_not_kafka.sort();
    assert_eq!(log_not_kafka, vec![rust.id.clone()]);
    let mut either = found(&app, "posts", "cats or postgresql", &at).await;
    either.sort();
    let mut expected = vec![cats.id.clone(), rust.id.clone()];
    expected.sort();
    assert_eq!(either, expected);
    // Only stop words: nothing, not an error.
    assert!(found(&app, "posts", "the and of", &at).await.is_empty());
    // Items are posts as every feed shows them.
    let resp = search(&app, "posts", "cats", &at).await;
    assert_eq!(resp.page_items()[0]["author"]["handle"], "alice");
    assert_eq!(resp.page_items()[0]["body"], "Pictures of cats");

    // Act: delete one.
    let deleted = app.delete_post(&alice.token, &both.id, &at).await;
    deleted.assert_status(202);
    at.push(deleted.str_field("position"));

    // Assert
    assert_eq!(
        found(&app, "posts", "kafka", &at).await,
        vec![kafka.id.clone()]
    );
}

#[tokio::test]
async fn search_pages_never_repeat_or_skip_a_result() {
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let mut at = vec![writer.position.clone()];
    let mut expected = Vec::new();
    // Many ties (the same body) and different ranks (more mentions).
    for i in 0..23 {
        let body = format!("chronicle {}", "chronicle ".repeat(i % 4));
        let post = app.publish_post(&writer, &body).await;
        at.push(post.position.clone());
        expected.push(post.id);
    }
    app.wait_for(&at).await;
    let mut seen: Vec<String> = Vec::new();
    let mut scores: Vec<f64> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = app
            .query("/v1/search/posts")
            .query(&[("q", "chronicle"), ("limit", "5")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let resp = app.send(request).await;
        resp.assert_status(200);
        let items = resp.page_items();
        assert!(items.len() <= 5);
        seen.extend(post_ids(&items));
        scores.extend(items.iter().map(|item| {
            let mentions = item["body"]
                .as_str()
                .unwrap_or("")
                .matches("chronicle")
                .count();
            mentions as f64
        }));
        match resp.next_cursor() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a result was repeated: {seen:?}");
    expected.sort();
    assert_eq!(sorted, expected, "a result was skipped");
    assert!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "more mentions rank first: {scores:?}"
    );
    // A cursor of another list is refused, not misread.
    let feed = app.get_page("/v1/feed", Some(1), None, &at).await;
    let feed_cursor = feed.next_cursor().expect("a next page");
    let resp = app
        .send(
            app.query("/v1/search/posts")
                .query(&[("q", "chronicle"), ("cursor", &feed_cursor)]),
        )
        .await;
    assert!(
        resp.status == 200 || resp.code() == Some("invalid_cursor"),
        "{resp}"
    );
}

#[tokio::test]
async fn users_are_found_by_a_prefix_or_a_typo_of_their_handle_or_name() {
    // Arrange
    let app = TestApp::spawn().await;
    let christopher = app.register_user("christopher", "Kit Marlowe").await;
    let chris = app.register_user("chrissie", "Chrissie Hynde").await;
    let other = app.register_user("zebra_99", "Someone Else").await;
    let at = vec![
        christopher.position.clone(),
        chris.position.clone(),
        other.position.clone(),
    ];

    // Assert: a prefix of a handle, a typo, a word of a display name, any case.
    let prefix = found(&app, "users", "chris", &at).await;
    assert!(
        prefix.contains(&christopher.id)
            && prefix.contains(&chris.id)
            && !prefix.contains(&other.id),
        "{prefix:?}"
    );
    assert_eq!(
        found(&app, "users", "christpher", &at).await[0],
        christopher.id
    );
    assert_eq!(
        found(&app, "users", "MARLOWE", &at).await,
        vec![christopher.id.clone()]
    );
    assert_eq!(
        found(&app, "users", "hynde", &at).await,
        vec![chris.id.clone()]
    );
    assert!(found(&app, "users", "qqqq", &at).await.is_empty());
    let resp = search(&app, "users", "zebra", &at).await;
    let item: &Value = &resp.page_items()[0];
    assert_eq!(item["handle"], "zebra_99");
    assert_eq!(item["display_name"], "Someone Else");

    // Act: a new display name.
    let renamed = app
        .update_profile(
            &other.token,
            serde_json::json!({ "display_name": "Marlowe Fan" }),
        )
        .await;
    renamed.assert_status(202);
    let at = [&at[..], &[renamed.str_field("position")]].concat();

    // Assert
    let mut marlowe = found(&app, "users", "marlowe", &at).await;
    marlowe.sort();
    let mut expected = vec![christopher.id.clone(), other.id.clone()];
    expected.sort();
    assert_eq!(marlowe, expected);
    assert!(found(&app, "users", "someone", &at).await.is_empty());
}

#[tokio::test]
async fn a_search_without_a_fitting_q_is_a_400() {
    let app = TestApp::spawn().await;
    for what in ["posts", "users"] {
        let path = format!("/v1/search/{what}");
        app.send(app.query(&path))
            .await
            .assert_problem(400, "validation_failed");
        for q in ["", "   ", &"x".repeat(257)] {
            search(&app, what, q, NO_POSITIONS)
                .await
                .assert_problem(400, "validation_failed");
        }
        search(&app, what, &"x".repeat(256), NO_POSITIONS)
            .await
            .assert_status(200);
        app.send(app.query(&path).query(&[("q", "a"), ("cursor", "nope")]))
            .await
            .assert_problem(400, "invalid_cursor");
        app.send(app.query(&path).query(&[("q", "a"), ("limit", "101")]))
            .await
            .assert_problem(400, "validation_failed");
    }
}
