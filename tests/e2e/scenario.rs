//! A small social graph built through the command API, read back through the query API: every
//! counter, feed and list must say exactly what the commands imply.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    NO_POSITIONS, PASSWORD, Resp, TestApp, TestPost, TestUser, post_ids, user_ids,
};
use crate::model::{Counters, Model, Op, assert_read_models};

/// Asserts `value` is an RFC 3339 UTC timestamp with milliseconds (`2026-11-26T09:30:00.123Z`).
#[track_caller]
pub(crate) fn assert_timestamp(value: Option<&Value>, what: &str) {
    let text = value
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: not a string: {value:?}"));
    let parsed = chrono::DateTime::parse_from_rfc3339(text);
    assert!(
        parsed.is_ok() && text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.',
        "{what}: {text:?} is not an RFC 3339 UTC timestamp with milliseconds"
    );
}

#[track_caller]
fn accepted(resp: Resp) -> String {
    resp.assert_status(202);
    resp.str_field("position")
}

#[tokio::test(flavor = "multi_thread")]
async fn read_models_follow_a_social_scenario() {
    // Arrange
    let app = TestApp::spawn().await;
    let alice = app.register_user("  Alice ", "Alice A").await;
    let bob = app.register_user("bob", "Bob B").await;
    let carol = app.register_user("carol", "Carol C").await;
    assert_eq!(alice.handle, "alice", "handles are trimmed and lowercased");
    let mut positions = vec![
        alice.position.clone(),
        bob.position.clone(),
        carol.position.clone(),
    ];
    let mut ops = Vec::new();

    // Act
    // Follows: alice -> bob (twice), alice -> carol, bob -> alice, carol -> alice, carol -> bob
    // and back. Each passes the followee's registration position for the existence check.
    let follows: [(&TestUser, &TestUser, bool); 7] = [
        (&alice, &bob, true),
        (&alice, &carol, true),
        (&alice, &bob, true),
        (&bob, &alice, true),
        (&carol, &alice, true),
        (&carol, &bob, true),
        (&carol, &bob, false),
    ];
    for (follower, followee, follow) in follows {
        let at = std::slice::from_ref(&followee.position);
        let resp = if follow {
            app.follow(&follower.token, &followee.id, at).await
        } else {
            app.unfollow(&follower.token, &followee.id, at).await
        };
        positions.push(accepted(resp));
        let (follower, followee) = (follower.id.clone(), followee.id.clone());
        ops.push(if follow {
            Op::Follow { follower, followee }
        } else {
            Op::Unfollow { follower, followee }
        });
    }

    // Posts, in this order: a1, b1, c1, a2, b2, b3.
    let a1 = app.publish_post(&alice, "a1: hello from alice").await;
    let b1 = app.publish_post(&bob, "b1: first from bob").await;
    let c1 = app.publish_post(&carol, "c1: carol here ✨").await;
    let a2 = app.publish_post(&alice, "a2: alice again").await;
    let b2 = app.publish_post(&bob, "b2: second from bob").await;
    let b3 = app.publish_post(&bob, "b3: third from bob").await;
    for post in [&a1, &b1, &c1, &a2, &b2, &b3] {
        positions.push(post.position.clone());
        ops.push(Op::Publish {
            post: post.id.clone(),
            author: post.author.clone(),
        });
    }

    // Likes, each passing the post's position: carol likes a1 twice, alice likes b2 then
    // unlikes it, carol unlikes c1 which she never liked.
    let likes: [(&TestUser, &TestPost, bool); 10] = [
        (&bob, &a1, true),
        (&carol, &a1, true),
        (&carol, &a1, true),
        (&alice, &b1, true),
        (&carol, &b1, true),
        (&alice, &b2, true),
        (&bob, &c1, true),
        (&alice, &c1, true),
        (&alice, &b2, false),
        (&carol, &c1, false),
    ];
    for (user, post, like) in likes {
        let at = std::slice::from_ref(&post.position);
        let resp = if like {
            app.like(&user.token, &post.id, at).await
        } else {
            app.unlike(&user.token, &post.id, at).await
        };
        positions.push(accepted(resp));
        let (user, post) = (user.id.clone(), post.id.clone());
        ops.push(if like {
            Op::Like { user, post }
        } else {
            Op::Unlike { user, post }
        });
    }

    // bob deletes b1, which alice and carol liked; a like after the deletion is a 404.
    let deleted_at = accepted(
        app.delete_post(&bob.token, &b1.id, std::slice::from_ref(&b1.position))
            .await,
    );
    positions.push(deleted_at.clone());
    ops.push(Op::Delete {
        post: b1.id.clone(),
    });
    app.like(&alice.token, &b1.id, std::slice::from_ref(&deleted_at))
        .await
        .assert_problem(404, "post_not_found");

    // bob edits his profile.
    positions.push(accepted(
        app.update_profile(
            &bob.token,
            json!({ "display_name": "Bobby", "bio": "Builds things" }),
        )
        .await,
    ));

    // Assert: profiles.
    let expect = [
        // post_count, followers, following, likes_received, likes_given
        (
            &alice,
            Counters {
                post_count: 2,
                follower_count: 2,
                following_count: 2,
                likes_received: 2,
                likes_given: 1,
            },
        ),
        (
            &bob,
            Counters {
                post_count: 2,
                follower_count: 1,
                following_count: 1,
                likes_received: 0,
                likes_given: 2,
            },
        ),
        (
            &carol,
            Counters {
                post_count: 1,
                follower_count: 1,
                following_count: 1,
                likes_received: 2,
                likes_given: 1,
            },
        ),
    ];
    for (user, counters) in expect {
        let profile = app.get_user(&user.id, &positions).await;
        profile.assert_status(200);
        assert_eq!(
            Counters::of_profile(&profile.body),
            counters,
            "counters of {}",
            user.handle
        );
        assert_eq!(profile.str_field("user_id"), user.id);
        assert_eq!(profile.str_field("handle"), user.handle);
        assert_timestamp(profile.body.get("joined_at"), "joined_at");
    }
    let bob_profile = app.get_user(&bob.id, &positions).await;
    assert_eq!(bob_profile.str_field("display_name"), "Bobby");
    assert_eq!(bob_profile.str_field("bio"), "Builds things");

    // By handle, with the lookup normalised like registration.
    let by_handle = app.get("/v1/users/by-handle/ALICE", &positions).await;
    by_handle.assert_status(200);
    assert_eq!(by_handle.str_field("user_id"), alice.id);
    assert_eq!(by_handle.str_field("handle"), "alice");
    assert_eq!(by_handle.str_field("display_name"), "Alice A");

    // Feeds, newest first.
    let ids = |posts: &[&TestPost]| posts.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    let feeds = [
        (format!("/v1/users/{}/posts", alice.id), ids(&[&a2, &a1])),
        (format!("/v1/users/{}/posts", bob.id), ids(&[&b3, &b2])),
        (format!("/v1/users/{}/posts", carol.id), ids(&[&c1])),
        (
            format!("/v1/users/{}/timeline", alice.id),
            ids(&[&b3, &b2, &a2, &c1, &a1]),
        ),
        (
            format!("/v1/users/{}/timeline", bob.id),
            ids(&[&b3, &b2, &a2, &a1]),
        ),
        (
            format!("/v1/users/{}/timeline", carol.id),
            ids(&[&a2, &c1, &a1]),
        ),
        ("/v1/feed".to_owned(), ids(&[&b3, &b2, &a2, &c1, &a1])),
    ];
    for (path, expected) in feeds {
        let resp = app.get_page(&path, None, None, &positions).await;
        resp.assert_status(200);
        assert_eq!(post_ids(&resp.page_items()), expected, "GET {path}");
        assert_eq!(
            resp.next_cursor(),
            None,
            "GET {path}: a short page is the last"
        );
    }

    // Posts: like counts, authors, bodies; the deleted post is gone.
    for (post, like_count, author, body) in [
        (&a1, 2, &alice, "a1: hello from alice"),
        (&a2, 0, &alice, "a2: alice again"),
        (&b2, 0, &bob, "b2: second from bob"),
        (&b3, 0, &bob, "b3: third from bob"),
        (&c1, 2, &carol, "c1: carol here ✨"),
    ] {
        let resp = app.get_post(&post.id, &positions).await;
        resp.assert_status(200);
        assert_eq!(resp.str_field("post_id"), post.id);
        assert_eq!(
            resp.u64_field("like_count"),
            like_count,
            "like_count of {body}"
        );
        assert_eq!(resp.str_field("body"), body);
        assert_eq!(
            resp.body.pointer("/author/user_id").and_then(Value::as_str),
            Some(author.id.as_str())
        );
        assert_eq!(
            resp.body.pointer("/author/handle").and_then(Value::as_str),
            Some(author.handle.as_str())
        );
        assert_timestamp(resp.body.get("published_at"), "published_at");
    }
    app.get_post(&b1.id, &positions)
        .await
        .assert_problem(404, "post_not_found");
    app.get(&format!("/v1/posts/{}/likes", b1.id), &positions)
        .await
        .assert_problem(404, "post_not_found");

    // Likes lists.
    for (post, likers) in [
        (&a1, vec![&bob, &carol]),
        (&c1, vec![&bob, &alice]),
        (&b2, vec![]),
    ] {
        let resp = app
            .get(&format!("/v1/posts/{}/likes", post.id), &positions)
            .await;
        resp.assert_status(200);
        let items = resp.page_items();
        let seen: Vec<String> = items
            .iter()
            .map(|like| {
                assert_timestamp(like.get("liked_at"), "liked_at");
                like.pointer("/user/user_id")
                    .and_then(Value::as_str)
                    .expect("like.user.user_id")
                    .to_owned()
            })
            .collect();
        let expected: BTreeSet<String> = likers.iter().map(|u| u.id.clone()).collect();
        assert_eq!(seen.len(), expected.len(), "likes of {}: {seen:?}", post.id);
        assert_eq!(
            seen.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "likes of {}",
            post.id
        );
    }

    // Followers and following.
    let set = |users: &[&TestUser]| users.iter().map(|u| u.id.clone()).collect::<BTreeSet<_>>();
    for (user, followers, following) in [
        (&alice, set(&[&bob, &carol]), set(&[&bob, &carol])),
        (&bob, set(&[&alice]), set(&[&alice])),
        (&carol, set(&[&alice]), set(&[&alice])),
    ] {
        for (list, expected) in [("followers", followers), ("following", following)] {
            let resp = app
                .get(&format!("/v1/users/{}/{list}", user.id), &positions)
                .await;
            resp.assert_status(200);
            let seen = user_ids(&resp.page_items());
            assert_eq!(
                seen.len(),
                expected.len(),
                "{list} of {}: {seen:?}",
                user.handle
            );
            assert_eq!(
                seen.into_iter().collect::<BTreeSet<_>>(),
                expected,
                "{list} of {}",
                user.handle
            );
        }
    }

    // And the generic model agrees with the hand-computed expectations above.
    let mut model = Model::new();
    for user in [&alice, &bob, &carol] {
        model.add_user(&user.id);
    }
    // Publications first: the model replays follows and likes against known posts.
    let (publishes, rest): (Vec<Op>, Vec<Op>) = ops
        .into_iter()
        .partition(|op| matches!(op, Op::Publish { .. }));
    model.apply_all(&publishes);
    model.apply_all(&rest);
    assert_read_models(&app, &model).await;
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn services_report_health_metrics_openapi_and_request_ids() {
    // Arrange
    let app = TestApp::spawn().await;
    let projector = app.projector_url().expect("a projector runs");

    for base in [&app.command_url, &app.query_url] {
        // Act / Assert
        for path in ["/healthz", "/readyz"] {
            let resp = app.send(app.client.get(format!("{base}{path}"))).await;
            resp.assert_status(200);
        }
        let metrics = app.send(app.client.get(format!("{base}/metrics"))).await;
        metrics.assert_status(200);
        assert!(
            metrics.content_type().starts_with("text/plain"),
            "metrics: {metrics}"
        );

        let openapi = app
            .send(app.client.get(format!("{base}/openapi.json")))
            .await;
        openapi.assert_status(200);
        assert!(
            openapi.str_field("openapi").starts_with("3.1"),
            "{base}/openapi.json is not OpenAPI 3.1"
        );
        // The reference page renders that document and needs nothing from the network.
        let docs = app
            .client
            .get(format!("{base}/docs"))
            .send()
            .await
            .expect("GET /docs");
        assert_eq!(docs.status(), 200);
        let page = docs.text().await.expect("the docs page");
        assert!(page.contains("fetch(\"openapi.json\")"), "{base}/docs");
        assert!(
            !page.contains("http://") && !page.contains("https://") && !page.contains(" src="),
            "{base}/docs loads something from elsewhere"
        );

        let echoed = app
            .send(
                app.client
                    .get(format!("{base}/healthz"))
                    .header("x-request-id", "e2e-req-42"),
            )
            .await;
        assert_eq!(echoed.header("x-request-id"), Some("e2e-req-42"));
        let generated = app.send(app.client.get(format!("{base}/healthz"))).await;
        assert!(
            generated
                .header("x-request-id")
                .is_some_and(|id| !id.is_empty()),
            "{base} answered without x-request-id"
        );
    }
    app.send(app.client.get(format!("{projector}/healthz")))
        .await
        .assert_status(200);

    // Errors carry a request id too.
    let not_found = app
        .get(&format!("/v1/users/{}", uuid::Uuid::now_v7()), NO_POSITIONS)
        .await;
    not_found.assert_problem(404, "user_not_found");
    assert!(not_found.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_command_with_an_idempotency_key_takes_effect_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let other = app.register_user("other", "Other").await;
    let publish = |user: &TestUser, key: &str| {
        app.command(Method::POST, "/v1/posts")
            .bearer_auth(&user.token)
            .header("Idempotency-Key", key)
            .json(&json!({ "body": "only once" }))
    };

    // Act
    let first = app.send(publish(&writer, "retry-key-1")).await;
    let retry = app.send(publish(&writer, "retry-key-1")).await;
    let same_key_other_user = app.send(publish(&other, "retry-key-1")).await;

    // Assert
    first.assert_status(202);
    retry.assert_status(202);
    same_key_other_user.assert_status(202);
    assert_eq!(
        (retry.str_field("post_id"), retry.str_field("position")),
        (first.str_field("post_id"), first.str_field("position")),
        "a retry with the same Idempotency-Key must return the first answer"
    );
    assert_ne!(
        same_key_other_user.str_field("post_id"),
        first.str_field("post_id"),
        "idempotency keys are per user"
    );
    let positions = vec![
        writer.position.clone(),
        other.position.clone(),
        first.str_field("position"),
        same_key_other_user.str_field("position"),
    ];
    let feed = app
        .collect_pages(&format!("/v1/users/{}/posts", writer.id), &positions)
        .await;
    assert_eq!(post_ids(&feed), vec![first.str_field("post_id")]);
    let profile = app.get_user(&writer.id, &positions).await;
    assert_eq!(profile.u64_field("post_count"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_an_answer_lost_between_acknowledgement_and_reply_takes_effect_once() {
    // Arrange: a published post whose answer, as far as the command API knows, was never
    // given: the broker acknowledged its event, then the process died before recording where
    // it landed (the state a SIGKILL at that instant leaves, made here exactly).
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let publish = || {
        app.command(Method::POST, "/v1/posts")
            .bearer_auth(&writer.token)
            .header("Idempotency-Key", "lost-answer")
            .json(&json!({ "body": "acknowledged, never answered" }))
    };
    let first = app.send(publish()).await;
    first.assert_status(202);
    let forgotten = app
        .db()
        .await
        .execute(
            "UPDATE command.idempotency_keys SET partition = NULL, \"offset\" = NULL
             WHERE key = 'lost-answer'",
            &[],
        )
        .await
        .expect("forget the recorded answer");
    assert_eq!(forgotten, 1);

    // Act: the client retries with its key.
    let retry = app.send(publish()).await;

    // Assert: the same post, appended a second time (a new position), applied once.
    retry.assert_status(202);
    assert_eq!(retry.str_field("post_id"), first.str_field("post_id"));
    assert_ne!(retry.str_field("position"), first.str_field("position"));
    let positions = vec![
        writer.position.clone(),
        first.str_field("position"),
        retry.str_field("position"),
    ];
    let profile = app.get_user(&writer.id, &positions).await;
    assert_eq!(profile.u64_field("post_count"), 1, "{profile}");
    let feed = app
        .collect_pages(&format!("/v1/users/{}/posts", writer.id), &positions)
        .await;
    assert_eq!(post_ids(&feed), vec![first.str_field("post_id")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_latencies_produce_outcomes_pool_usage_and_lag() {
    // Arrange: one command and one read have been served.
    let app = TestApp::spawn().await;
    let user = app.register_user("measured", "Measured").await;
    app.get_user(&user.id, std::slice::from_ref(&user.position))
        .await
        .assert_status(200);
    let metrics_of = |base: String| {
        let client = app.client.clone();
        async move {
            let response = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("GET /metrics");
            assert_eq!(response.status(), 200);
            response.text().await.expect("the metrics")
        }
    };

    // Act / Assert: the command API times commands by route and status, and the broker's
    // acknowledgements; both APIs show their pools.
    let command = metrics_of(app.command_url.clone()).await;
    for expected in [
        "http_request_duration_seconds_bucket{route=\"/v1/users\",method=\"POST\",status=\"201\"",
        "events_produce_duration_seconds_bucket{outcome=\"acknowledged\"",
        "db_pool_connections{pool=\"command\",state=\"in_use\"}",
        "db_pool_waiting{pool=\"command\"}",
    ] {
        assert!(
            command.contains(expected),
            "command-api lacks {expected}:\n{command}"
        );
    }
    let query = metrics_of(app.query_url.clone()).await;
    for expected in [
        "http_request_duration_seconds_bucket{route=\"/v1/users/{user_id}\",method=\"GET\",status=\"200\"",
        "db_pool_connections{pool=\"query\",state=\"idle\"}",
    ] {
        assert!(
            query.contains(expected),
            "query-api lacks {expected}:\n{query}"
        );
    }
    // The projector: batch sizes and apply times, and the lag per partition, which comes with
    // librdkafka's statistics every 5 s.
    let projector = app.projector_url().expect("a projector runs");
    let started = std::time::Instant::now();
    loop {
        let metrics = metrics_of(projector.clone()).await;
        if metrics.contains("projector_lag_events{partition=") {
            assert!(
                metrics.contains("projector_batch_duration_seconds"),
                "{metrics}"
            );
            assert!(metrics.contains("projector_batch_size"), "{metrics}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the projector reported no lag within 30 s:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_key_replayed_from_another_address_gets_no_token() {
    // Arrange: a registration with a key, from 127.0.0.1.
    let app = TestApp::spawn().await;
    let body = json!({ "handle": "keyed", "display_name": "Keyed", "password": PASSWORD });
    let register = |client: &reqwest::Client| {
        client
            .post(format!("{}/v1/users", app.command_url))
            .header("Idempotency-Key", "register-once")
            .json(&body)
    };
    let first = app.send(register(&app.client)).await;
    first.assert_status(201);

    // Act: the same key and the same (public) profile, from the client again and from
    // another address.
    let retry = app.send(register(&app.client)).await;
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("a client on 127.0.0.2");
    let replayed = app.send(register(&elsewhere)).await;

    // Assert: the client gets its first answer (the same user; the token is issued anew, so it
    // may differ in its issue time, and it works); the other address a conflict, and no token.
    retry.assert_status(201);
    assert_eq!(retry.str_field("user_id"), first.str_field("user_id"));
    assert_eq!(retry.str_field("handle"), "keyed");
    let published = app
        .send(
            app.command(Method::POST, "/v1/posts")
                .bearer_auth(retry.str_field("token"))
                .json(&json!({ "body": "signed with the replayed token" })),
        )
        .await;
    published.assert_status(202);
    replayed.assert_problem(409, "handle_taken");
    assert!(replayed.body.get("token").is_none(), "{replayed}");
}
