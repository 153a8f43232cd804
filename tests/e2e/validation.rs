//! Bad input gets a precise problem document (status, `application/problem+json`, stable
//! `code`), never a 500; boundary values are accepted; handles are unique even under
//! concurrent registrations.

use futures_util::future::join_all;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Resp, TestApp};

/// Over the 64 KiB body limit.
const OVERSIZED: usize = 70 * 1024;

fn emoji(count: usize) -> String {
    "🦀".repeat(count)
}

fn letters(count: usize) -> String {
    "x".repeat(count)
}

/// Requests and the problem each must produce; every mismatch is reported at once.
struct Expectations<'a> {
    app: &'a TestApp,
    failures: Vec<String>,
}

impl<'a> Expectations<'a> {
    fn new(app: &'a TestApp) -> Self {
        Expectations {
            app,
            failures: Vec::new(),
        }
    }

    /// Sends `request` and checks it is a problem with one of `statuses` and `code`.
    async fn problem_in(
        &mut self,
        label: &str,
        request: RequestBuilder,
        statuses: &[u16],
        code: &str,
    ) {
        let resp = self.app.send(request).await;
        let ok = statuses.contains(&resp.status.as_u16())
            && resp.code() == Some(code)
            && resp.content_type().starts_with("application/problem+json")
            && resp.body.get("status").and_then(Value::as_u64)
                == Some(u64::from(resp.status.as_u16()))
            && ["type", "title", "detail"]
                .iter()
                .all(|f| resp.body.get(*f).is_some_and(Value::is_string));
        if !ok {
            self.failures.push(format!(
                "{label}: expected {statuses:?} `{code}` problem+json, got {resp}"
            ));
        }
    }

    async fn problem(&mut self, label: &str, request: RequestBuilder, status: u16, code: &str) {
        self.problem_in(label, request, &[status], code).await;
    }

    /// Sends `request` and checks its status; returns the answer.
    async fn status(&mut self, label: &str, request: RequestBuilder, status: u16) -> Resp {
        let resp = self.app.send(request).await;
        if resp.status.as_u16() != status {
            self.failures
                .push(format!("{label}: expected {status}, got {resp}"));
        }
        resp
    }

    #[track_caller]
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} bad-input expectations failed:\n{}",
            self.failures.len(),
            self.failures
                .iter()
                .map(|f| format!("  - {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn raw_json(request: RequestBuilder, body: impl Into<String>) -> RequestBuilder {
    request
        .header(CONTENT_TYPE, "application/json")
        .body(body.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_rejects_bad_input_and_accepts_boundaries() {
    let app = TestApp::spawn().await;
    let mut expect = Expectations::new(&app);
    let post = || app.command(Method::POST, "/v1/users");

    // Bodies that are not the documented object: 400 invalid_body.
    for (label, body) in [
        (
            "malformed JSON",
            r#"{"handle": "abc", "display_name": "#.to_owned(),
        ),
        ("not an object", "[]".to_owned()),
        ("a bare string", r#""abc""#.to_owned()),
        ("empty body", String::new()),
        (
            "handle of the wrong type",
            json!({"handle": 5, "display_name": "x"}).to_string(),
        ),
        (
            "bio of the wrong type",
            json!({"handle": "abc", "display_name": "x", "bio": 1}).to_string(),
        ),
        ("missing display_name", json!({"handle": "abc"}).to_string()),
        ("missing handle", json!({"display_name": "x"}).to_string()),
        (
            "missing password",
            json!({"handle": "abc", "display_name": "x"}).to_string(),
        ),
        (
            "null password",
            json!({"handle": "abc", "display_name": "x", "password": null}).to_string(),
        ),
        (
            "password of the wrong type",
            json!({"handle": "abc", "display_name": "x", "password": 12345678}).to_string(),
        ),
        (
            "unknown field user_id",
            json!({"handle": "abc", "display_name": "x", "user_id": uuid::Uuid::now_v7()})
                .to_string(),
        ),
    ] {
        expect
            .problem(
                &format!("register: {label}"),
                raw_json(post(), body),
                400,
                "invalid_body",
            )
            .await;
    }

    // Values out of range: 422 validation_failed.
    for (label, handle, display_name, bio) in [
        (
            "handle of 2 characters",
            "ab".to_owned(),
            "x".to_owned(),
            None,
        ),
        ("handle of 31 characters", letters(31), "x".to_owned(), None),
        ("empty handle", String::new(), "x".to_owned(), None),
        ("blank handle", "   ".to_owned(), "x".to_owned(), None),
        (
            "handle with a dash",
            "bad-handle".to_owned(),
            "x".to_owned(),
            None,
        ),
        (
            "handle with a space",
            "has space".to_owned(),
            "x".to_owned(),
            None,
        ),
        (
            "handle with a non-ASCII letter",
            "héllo".to_owned(),
            "x".to_owned(),
            None,
        ),
        ("empty display_name", "abc".to_owned(), String::new(), None),
        (
            "blank display_name",
            "abc".to_owned(),
            " \t ".to_owned(),
            None,
        ),
        (
            "display_name of 51 characters",
            "abc".to_owned(),
            letters(51),
            None,
        ),
        (
            "display_name of 51 emoji",
            "abc".to_owned(),
            emoji(51),
            None,
        ),
        (
            "bio of 161 characters",
            "abc".to_owned(),
            "x".to_owned(),
            Some(letters(161)),
        ),
        (
            "bio of 161 emoji",
            "abc".to_owned(),
            "x".to_owned(),
            Some(emoji(161)),
        ),
    ] {
        let mut body =
            json!({"handle": handle, "display_name": display_name, "password": PASSWORD});
        if let Some(bio) = bio {
            body["bio"] = json!(bio);
        }
        expect
            .problem(
                &format!("register: {label}"),
                post().json(&body),
                422,
                "validation_failed",
            )
            .await;
    }

    // Passwords: 8 to 128 characters (counted as characters, never trimmed).
    for (label, password) in [
        ("a password of 7 characters", "1234567".to_owned()),
        ("a password of 7 spaces", "       ".to_owned()),
        ("a password of 129 emoji", emoji(129)),
    ] {
        let body = json!({"handle": "pw_rule", "display_name": "x", "password": password});
        expect
            .problem(
                &format!("register: {label}"),
                post().json(&body),
                422,
                "validation_failed",
            )
            .await;
    }

    // Too large, wrong media type.
    let huge =
        json!({"handle": "huge", "display_name": "x", "bio": letters(OVERSIZED)}).to_string();
    expect
        .problem(
            "register: body over 64 KiB",
            raw_json(post(), huge),
            413,
            "payload_too_large",
        )
        .await;
    let as_text = post()
        .header(CONTENT_TYPE, "text/plain")
        .body(json!({"handle": "texty", "display_name": "x"}).to_string());
    expect
        .problem_in(
            "register: text/plain body",
            as_text,
            &[400, 415],
            "invalid_body",
        )
        .await;

    // Boundaries that are fine (lengths count Unicode scalar values, not bytes).
    for (label, body, handle) in [
        (
            "handle of 3",
            json!({"handle": "abc", "display_name": "x", "password": PASSWORD}),
            "abc".to_owned(),
        ),
        (
            "handle of 30",
            json!({"handle": letters(30), "display_name": "x", "password": PASSWORD}),
            letters(30),
        ),
        (
            "mixed-case handle",
            json!({"handle": " Mixed_Case_9 ", "display_name": "x", "password": "12345678"}),
            "mixed_case_9".to_owned(),
        ),
        (
            "display_name of 50 emoji",
            json!({"handle": "emoji_name", "display_name": emoji(50), "password": emoji(128)}),
            "emoji_name".to_owned(),
        ),
        (
            "bio of 160 emoji",
            json!({"handle": "emoji_bio", "display_name": "x", "bio": emoji(160), "password": PASSWORD}),
            "emoji_bio".to_owned(),
        ),
    ] {
        let resp = expect
            .status(&format!("register: {label}"), post().json(&body), 201)
            .await;
        if resp.status == 201
            && resp.body.get("handle").and_then(Value::as_str) != Some(handle.as_str())
        {
            expect.failures.push(format!(
                "register: {label}: expected handle {handle:?}, got {resp}"
            ));
        }
    }
    // The body's media type may be omitted, or carry parameters.
    let untyped = post()
        .body(json!({"handle": "untyped", "display_name": "x", "password": PASSWORD}).to_string());
    expect
        .status("register: no Content-Type", untyped, 201)
        .await;
    let charset = post()
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(json!({"handle": "charset", "display_name": "x", "password": PASSWORD}).to_string());
    expect
        .status("register: application/json; charset=utf-8", charset, 201)
        .await;

    expect.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_reject_bad_input() {
    // Arrange
    let app = TestApp::spawn().await;
    let user = app.register_user("commander", "Commander").await;
    let other = app.register_user("bystander", "Bystander").await;
    let post = app.publish_post(&user, "a post to act on").await;
    let known = vec![
        user.position.clone(),
        other.position.clone(),
        post.position.clone(),
    ];
    app.wait_for(&known).await;
    let mut expect = Expectations::new(&app);
    let publish = || {
        app.command(Method::POST, "/v1/posts")
            .bearer_auth(&user.token)
    };
    let patch = || {
        app.command(Method::PATCH, "/v1/users/me")
            .bearer_auth(&user.token)
    };

    // POST /v1/posts
    for (label, body) in [
        ("malformed JSON", r#"{"body": "#.to_owned()),
        ("body of the wrong type", json!({"body": 5}).to_string()),
        ("missing body", "{}".to_owned()),
        (
            "unknown field author_id",
            json!({"body": "hi", "author_id": other.id}).to_string(),
        ),
    ] {
        expect
            .problem(
                &format!("publish: {label}"),
                raw_json(publish(), body),
                400,
                "invalid_body",
            )
            .await;
    }
    for (label, body) in [
        ("empty body", String::new()),
        ("blank body", " \n\t ".to_owned()),
        ("1001 characters", letters(1001)),
        ("1001 emoji", emoji(1001)),
    ] {
        expect
            .problem(
                &format!("publish: {label}"),
                publish().json(&json!({"body": body})),
                422,
                "validation_failed",
            )
            .await;
    }
    expect
        .problem(
            "publish: body over 64 KiB",
            raw_json(publish(), json!({"body": letters(OVERSIZED)}).to_string()),
            413,
            "payload_too_large",
        )
        .await;
    let as_text = publish()
        .header(CONTENT_TYPE, "text/plain")
        .body(json!({"body": "hi"}).to_string());
    expect
        .problem_in(
            "publish: text/plain body",
            as_text,
            &[400, 415],
            "invalid_body",
        )
        .await;
    expect
        .status(
            "publish: 1000 emoji",
            publish().json(&json!({"body": emoji(1000)})),
            202,
        )
        .await;
    expect
        .status(
            "publish: 1000 characters",
            publish().json(&json!({"body": letters(1000)})),
            202,
        )
        .await;

    // PATCH /v1/users/me
    for (label, body) in [
        ("malformed JSON", "{".to_owned()),
        (
            "unknown field handle",
            json!({"handle": "renamed"}).to_string(),
        ),
        ("bio of the wrong type", json!({"bio": 7}).to_string()),
    ] {
        expect
            .problem(
                &format!("update profile: {label}"),
                raw_json(patch(), body),
                400,
                "invalid_body",
            )
            .await;
    }
    for (label, body) in [
        ("neither field", json!({})),
        ("empty display_name", json!({"display_name": ""})),
        (
            "display_name of 51 emoji",
            json!({"display_name": emoji(51)}),
        ),
        ("bio of 161 characters", json!({"bio": letters(161)})),
    ] {
        expect
            .problem(
                &format!("update profile: {label}"),
                patch().json(&body),
                422,
                "validation_failed",
            )
            .await;
    }
    expect
        .status(
            "update profile: bio of 160 emoji",
            patch().json(&json!({"bio": emoji(160)})),
            202,
        )
        .await;

    // Ids in paths that are not UUIDs: 400 validation_failed.
    for bad_id in ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"] {
        for (method, path) in [
            (Method::DELETE, format!("/v1/posts/{bad_id}")),
            (Method::PUT, format!("/v1/posts/{bad_id}/like")),
            (Method::DELETE, format!("/v1/posts/{bad_id}/like")),
            (Method::PUT, format!("/v1/users/me/following/{bad_id}")),
            (Method::DELETE, format!("/v1/users/me/following/{bad_id}")),
        ] {
            let request = app.command(method.clone(), &path).bearer_auth(&user.token);
            expect
                .problem(
                    &format!("{method} {path}"),
                    request,
                    400,
                    "validation_failed",
                )
                .await;
        }
    }

    // Unknown ids: 404 with the precise code.
    let unknown = uuid::Uuid::now_v7().to_string();
    for (method, path, code) in [
        (
            Method::DELETE,
            format!("/v1/posts/{unknown}"),
            "post_not_found",
        ),
        (
            Method::PUT,
            format!("/v1/posts/{unknown}/like"),
            "post_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/posts/{unknown}/like"),
            "post_not_found",
        ),
        (
            Method::PUT,
            format!("/v1/users/me/following/{unknown}"),
            "user_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/users/me/following/{unknown}"),
            "user_not_found",
        ),
    ] {
        let request = app
            .command(method.clone(), &path)
            .bearer_auth(&user.token)
            .query(&[("min_position", &user.position)]);
        expect
            .problem(&format!("{method} {path}"), request, 404, code)
            .await;
    }

    // Following yourself.
    let request = app
        .command(Method::PUT, &format!("/v1/users/me/following/{}", user.id))
        .bearer_auth(&user.token)
        .query(&[("min_position", &user.position)]);
    expect
        .problem("follow yourself", request, 422, "cannot_follow_self")
        .await;

    expect.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_reject_bad_input() {
    // Arrange
    let app = TestApp::spawn().await;
    let user = app.register_user("queried", "Queried").await;
    let post = app.publish_post(&user, "a post to read").await;
    app.wait_for(&[user.position.clone(), post.position.clone()])
        .await;
    let mut expect = Expectations::new(&app);
    let lists = [
        "/v1/feed".to_owned(),
        format!("/v1/users/{}/posts", user.id),
        format!("/v1/users/{}/timeline", user.id),
        format!("/v1/users/{}/followers", user.id),
        format!("/v1/users/{}/following", user.id),
        format!("/v1/posts/{}/likes", post.id),
    ];

    for list in &lists {
        // Bad limits.
        for limit in ["0", "101", "-1", "abc", "1.5"] {
            let request = app.query(list).query(&[("limit", limit)]);
            expect
                .problem(
                    &format!("GET {list}?limit={limit}"),
                    request,
                    400,
                    "validation_failed",
                )
                .await;
        }
        // Bad cursors: not base64, base64 of garbage, base64 of JSON that is no cursor.
        for cursor in ["!!!", "Zm9v", "eyJub3QiOiJhIGN1cnNvciJ9", "%%"] {
            let request = app.query(list).query(&[("cursor", cursor)]);
            expect
                .problem(
                    &format!("GET {list}?cursor={cursor}"),
                    request,
                    400,
                    "invalid_cursor",
                )
                .await;
        }
        // Good limits.
        for limit in ["1", "100"] {
            expect
                .status(
                    &format!("GET {list}?limit={limit}"),
                    app.query(list).query(&[("limit", limit)]),
                    200,
                )
                .await;
        }
    }

    // Ids that are not UUIDs.
    for path in [
        "/v1/users/not-a-uuid",
        "/v1/users/not-a-uuid/posts",
        "/v1/users/not-a-uuid/timeline",
        "/v1/users/not-a-uuid/followers",
        "/v1/users/not-a-uuid/following",
        "/v1/posts/not-a-uuid",
        "/v1/posts/12345/likes",
    ] {
        expect
            .problem(
                &format!("GET {path}"),
                app.query(path),
                400,
                "validation_failed",
            )
            .await;
    }

    // Unknown ids and handles.
    let unknown = uuid::Uuid::now_v7();
    for (path, code) in [
        (format!("/v1/users/{unknown}"), "user_not_found"),
        (format!("/v1/users/{unknown}/posts"), "user_not_found"),
        (format!("/v1/users/{unknown}/timeline"), "user_not_found"),
        (format!("/v1/users/{unknown}/followers"), "user_not_found"),
        (format!("/v1/users/{unknown}/following"), "user_not_found"),
        (
            "/v1/users/by-handle/nobody_here".to_owned(),
            "user_not_found",
        ),
        (format!("/v1/posts/{unknown}"), "post_not_found"),
        (format!("/v1/posts/{unknown}/likes"), "post_not_found"),
    ] {
        expect
            .problem(&format!("GET {path}"), app.query(&path), 404, code)
            .await;
    }
    expect
        .problem(
            "GET an unknown route",
            app.query("/v1/nothing-here"),
            404,
            "not_found",
        )
        .await;
    expect.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handle_is_taken_case_insensitively() {
    // Arrange
    let app = TestApp::spawn().await;
    let first = app.register_user("dupe", "First").await;

    // Act / Assert
    for variant in ["dupe", "DUPE", "  Dupe  "] {
        app.register(variant, "Second")
            .await
            .assert_problem(409, "handle_taken");
    }
    let profile = app
        .get(
            "/v1/users/by-handle/dupe",
            std::slice::from_ref(&first.position),
        )
        .await;
    profile.assert_status(200);
    assert_eq!(profile.str_field("user_id"), first.id);
    assert_eq!(profile.str_field("display_name"), "First");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_of_one_handle_admit_exactly_one() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act: 100 registrations of the same handle at once.
    let answers: Vec<Resp> = join_all((0..100).map(|i| {
        let app = &app;
        async move { app.register("contested", &format!("Contender {i}")).await }
    }))
    .await;

    // Assert
    let winners: Vec<&Resp> = answers.iter().filter(|r| r.status == 201).collect();
    let losers = answers
        .iter()
        .filter(|r| r.status == 409 && r.code() == Some("handle_taken"))
        .count();
    let others: Vec<String> = answers
        .iter()
        .filter(|r| r.status != 201 && !(r.status == 409 && r.code() == Some("handle_taken")))
        .map(ToString::to_string)
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    assert_eq!((winners.len(), losers), (1, 99));
    let winner = winners[0];
    let profile = app
        .get(
            "/v1/users/by-handle/contested",
            &[winner.str_field("position")],
        )
        .await;
    profile.assert_status(200);
    assert_eq!(profile.str_field("user_id"), winner.str_field("user_id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_metacharacters_and_unicode_edge_cases_come_back_literally() {
    // Arrange: texts that break naive SQL, JSON or Unicode handling.
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let texts = [
        "'; DROP TABLE read_g1.posts; --",
        "Robert'); DELETE FROM projection.offsets WHERE ('1'='1",
        "100% of _all_ \\ back\\slashes $1 $$ E'\\n' \" quotes \"",
        "\u{202e}reversed by a bidi override\u{202c} and \u{200b}zero\u{200d}width",
        "e\u{301} (combining) vs \u{e9} (precomposed), \u{fb01} ligature",
        "👨\u{200d}👩\u{200d}👧 family, 🏳\u{fe0f}\u{200d}🌈 flag, 𝕳𝖊𝖑𝖑𝖔",
        "\u{feff}BOM, \u{fffd} replacement, 中文, العربية, עברית",
        "line\nbreaks\r\nand\ttabs inside",
        "<script>alert(1)</script> &amp; {\"json\": [1]}",
    ];

    // Act
    let mut posts = Vec::new();
    for text in texts {
        let resp = app.publish(&writer.token, text).await;
        resp.assert_status(202);
        posts.push((text, resp.str_field("post_id"), resp.str_field("position")));
    }
    let bio = texts[0];
    let updated = app
        .update_profile(
            &writer.token,
            json!({ "display_name": texts[5], "bio": bio }),
        )
        .await;
    updated.assert_status(202);
    let mut positions: Vec<String> = posts.iter().map(|(_, _, p)| p.clone()).collect();
    positions.push(updated.str_field("position"));
    app.wait_for(&positions).await;

    // Assert: every text comes back byte for byte, and the tables they aimed at are intact.
    for (text, id, _) in &posts {
        let post = app.get_post(id, &[]).await;
        post.assert_status(200);
        assert_eq!(post.str_field("body"), *text);
    }
    let profile = app.get_user(&writer.id, &[]).await;
    assert_eq!(profile.str_field("display_name"), texts[5]);
    assert_eq!(profile.str_field("bio"), bio);
    assert_eq!(profile.u64_field("post_count"), texts.len() as u64);
}
