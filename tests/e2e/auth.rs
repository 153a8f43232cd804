//! Every command needs a valid token of the acting user; acting on someone else's post is
//! forbidden.

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};

use crate::harness::{
    Rng, TestApp, TokenKey, random_alphanumeric, sign_hs256, token_kid, with_positions,
};

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_rejects_a_missing_or_bad_token() {
    // Arrange
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;
    let post = app.publish_post(&alice, "alice's post").await;
    let positions = vec![
        alice.position.clone(),
        bob.position.clone(),
        post.position.clone(),
    ];
    app.wait_for(&positions).await;

    let claims = TestApp::token_claims(&alice.token);
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(alice.id.as_str()),
        "sub is the user id"
    );
    assert_eq!(token_kid(&alice.token), Some(app.token_key.kid.clone()));
    let other_key = TokenKey::generate(app.key_dir(), "other-key", &mut Rng::from_entropy());
    let forged = other_key.sign_as(&claims, &app.token_key.kid);
    let foreign = other_key.sign(&claims);
    let hs256 = sign_hs256(&claims, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL");
    let mut not_a_uuid = claims.clone();
    not_a_uuid["sub"] = json!("not-a-uuid");
    let not_a_uuid = app.sign_token(&not_a_uuid);
    let mut no_kid = alice.token.splitn(2, '.');
    let no_kid = format!(
        "{}.{}",
        base64url(br#"{"alg":"EdDSA","typ":"JWT"}"#),
        no_kid.nth(1).expect("a JWT has three parts")
    );
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let tampered = {
        let (head, signature) = alice.token.rsplit_once('.').expect("a JWT has a signature");
        let mut signature = signature.to_owned();
        let first = if signature.starts_with('A') { "B" } else { "A" };
        signature.replace_range(0..1, first);
        format!("{head}.{signature}")
    };

    let mut authorizations: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        (
            "Basic credentials",
            Some("Basic YWxpY2U6c2VjcmV0".to_owned()),
        ),
        ("Bearer without a token", Some("Bearer".to_owned())),
        (
            "the token without the Bearer scheme",
            Some(alice.token.clone()),
        ),
        ("a garbage token", Some("Bearer not-a-token".to_owned())),
        (
            "three garbage segments",
            Some("Bearer aaaa.bbbb.cccc".to_owned()),
        ),
        (
            "a token signed with another key under this key's id",
            Some(format!("Bearer {forged}")),
        ),
        (
            "a token signed with another key under its own id",
            Some(format!("Bearer {foreign}")),
        ),
        (
            "an HS256 token (as made before Ed25519)",
            Some(format!("Bearer {hs256}")),
        ),
        (
            "the real token with its key id removed",
            Some(format!("Bearer {no_kid}")),
        ),
        (
            "a token whose sub is not a UUID",
            Some(format!("Bearer {not_a_uuid}")),
        ),
        (
            "an unsigned (alg none) token",
            Some(format!("Bearer {unsigned}")),
        ),
        (
            "a token with a tampered signature",
            Some(format!("Bearer {tampered}")),
        ),
    ];
    let expired;
    if claims.get("exp").is_some() {
        let now = chrono::Utc::now().timestamp();
        let mut old = claims.clone();
        old["exp"] = json!(now - 3600);
        if old.get("iat").is_some() {
            old["iat"] = json!(now - 7200);
        }
        if old.get("nbf").is_some() {
            old["nbf"] = json!(now - 7200);
        }
        expired = app.sign_token(&old);
        authorizations.push(("an expired token", Some(format!("Bearer {expired}"))));
    }

    // Each command, with a body and positions that would make it succeed with a good token.
    let commands: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/posts".to_owned(),
            Some(json!({"body": "hello"})),
        ),
        (
            Method::PATCH,
            "/v1/users/me".to_owned(),
            Some(json!({"bio": "new bio"})),
        ),
        (Method::PUT, format!("/v1/posts/{}/like", post.id), None),
        (Method::DELETE, format!("/v1/posts/{}/like", post.id), None),
        (
            Method::PUT,
            format!("/v1/users/me/following/{}", bob.id),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/users/me/following/{}", bob.id),
            None,
        ),
        (Method::DELETE, format!("/v1/posts/{}", post.id), None),
    ];
    let request =
        |method: &Method, path: &str, body: &Option<Value>, authorization: Option<&str>| {
            let mut request = with_positions(app.command(method.clone(), path), &positions);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            request
        };

    // Act / Assert: every bad authorization is a 401 on every command.
    let mut failures = Vec::new();
    for (method, path, body) in &commands {
        for (label, authorization) in &authorizations {
            let resp = app
                .send(request(method, path, body, authorization.as_deref()))
                .await;
            let ok = resp.status == 401
                && resp.code() == Some("unauthorized")
                && resp.content_type().starts_with("application/problem+json");
            if !ok {
                failures.push(format!(
                    "{method} {path} with {label}: expected 401 unauthorized, got {resp}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // And the same requests with the real token succeed, so only the token made the difference.
    for (method, path, body) in &commands {
        let bearer = format!("Bearer {}", alice.token);
        let resp = app.send(request(method, path, body, Some(&bearer))).await;
        resp.assert_status(202);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_another_users_post_is_forbidden_and_changes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let mallory = app.register_user("mallory", "Mallory").await;
    let post = app.publish_post(&alice, "mine, not mallory's").await;
    let at_post = vec![
        alice.position.clone(),
        mallory.position.clone(),
        post.position.clone(),
    ];

    // Act
    let resp = app.delete_post(&mallory.token, &post.id, &at_post).await;

    // Assert: forbidden, and no deletion reached the log: a later event on the same post (a
    // like, keyed like the post) is applied to a post that still exists.
    resp.assert_problem(403, "forbidden");
    let liked = app.like(&alice.token, &post.id, &at_post).await;
    liked.assert_status(202);
    let after_like = vec![liked.str_field("position")];
    let read = app.get_post(&post.id, &after_like).await;
    read.assert_status(200);
    assert_eq!(read.u64_field("like_count"), 1);
    let profile = app.get_user(&alice.id, &after_like).await;
    assert_eq!(profile.u64_field("post_count"), 1);
    assert_eq!(profile.u64_field("likes_received"), 1);

    // The author herself may delete it.
    let deleted = app.delete_post(&alice.token, &post.id, &after_like).await;
    deleted.assert_status(202);
    app.get_post(&post.id, &[deleted.str_field("position")])
        .await
        .assert_problem(404, "post_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_a_retired_signing_key_work_until_its_public_key_is_dropped() {
    // Arrange: alice's token is signed with the key the app started with.
    let app = TestApp::spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let old = app.token_key.clone();
    let new = TokenKey::generate(app.key_dir(), "new-key", &mut Rng::from_entropy());
    let new_private = new.private_file.display().to_string();
    let old_public = old.public_file.display().to_string();

    // Act: the command API signs with a new key and keeps the old one's public key.
    app.kill_command_api();
    app.start_command_api_with(&[
        ("CHRONICLE_TOKEN_SIGNING_KEY_FILE", &new_private),
        ("CHRONICLE_TOKEN_PUBLIC_KEY_FILES", &old_public),
    ])
    .await;
    let bob = app.register_user("bob", "Bob").await;

    // Assert: new tokens name the new key; both tokens act.
    assert_eq!(token_kid(&alice.token), Some(old.kid.clone()));
    assert_eq!(token_kid(&bob.token), Some(new.kid.clone()));
    for token in [&alice.token, &bob.token] {
        app.update_profile(token, json!({"bio": "during the rotation"}))
            .await
            .assert_status(202);
    }

    // Act: the old public key is dropped (its tokens have expired, in real life).
    app.kill_command_api();
    app.start_command_api_with(&[("CHRONICLE_TOKEN_SIGNING_KEY_FILE", &new_private)])
        .await;

    // Assert: only the new key's tokens act.
    app.update_profile(&alice.token, json!({"bio": "after the rotation"}))
        .await
        .assert_problem(401, "unauthorized");
    app.update_profile(&bob.token, json!({"bio": "after the rotation"}))
        .await
        .assert_status(202);
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_tokens_from_before_ed25519_act_while_their_secret_is_configured() {
    // Arrange: a command API upgraded from HS256 tokens, given the old secret.
    let mut rng = Rng::from_entropy();
    let secret = random_alphanumeric(48, &mut rng);
    let app = TestApp::builder()
        .env("CHRONICLE_JWT_SECRET", &secret)
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let claims = TestApp::token_claims(&alice.token);
    let legacy = sign_hs256(&claims, &secret);
    let other = sign_hs256(&claims, &random_alphanumeric(48, &mut rng));

    // Act / Assert: new tokens are Ed25519; an old one with the old secret acts, and only it.
    assert_eq!(token_kid(&alice.token), Some(app.token_key.kid.clone()));
    app.update_profile(&legacy, json!({"bio": "an old token"}))
        .await
        .assert_status(202);
    app.update_profile(&other, json!({"bio": "a forged old token"}))
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_secret_appears_in_any_log_line() {
    // Arrange: services logging at debug level, and requests carrying good and bad tokens.
    let app = TestApp::builder().env("RUST_LOG", "debug").spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let post = app.publish_post(&alice, "a post").await;
    let other_key = TokenKey::generate(app.key_dir(), "other-key", &mut Rng::from_entropy());
    let forged = other_key.sign_as(&TestApp::token_claims(&alice.token), &app.token_key.kid);
    for token in [alice.token.as_str(), forged.as_str(), "not-a-jwt-at-all"] {
        app.send(
            app.command(Method::PUT, &format!("/v1/posts/{}/like", post.id))
                .header(AUTHORIZATION, format!("Bearer {token}")),
        )
        .await;
    }
    app.wait_for(&[alice.position.clone(), post.position.clone()])
        .await;
    let (ok, _, stderr) = app.projector_cli(&["status"]).await;
    assert!(ok, "{stderr}");

    // Act: read every line every service wrote.
    let mut logs = String::new();
    for entry in std::fs::read_dir(app.log_dir()).expect("the log directory") {
        let path = entry.expect("a log file").path();
        logs.push_str(&std::fs::read_to_string(&path).expect("a readable log"));
    }

    // Assert: the logs say something, and nothing secret.
    assert!(
        logs.lines().count() > 20,
        "too little logged to mean anything"
    );
    let signature = |token: &str| token.rsplit('.').next().unwrap_or_default().to_owned();
    let private_key = std::fs::read_to_string(&app.token_key.private_file).expect("the key file");
    let private_key = private_key
        .lines()
        .find(|line| !line.starts_with("-----"))
        .expect("a PEM body")
        .to_owned();
    let secrets = [
        ("the token signing key", private_key),
        ("alice's token", alice.token.clone()),
        ("alice's token signature", signature(&alice.token)),
        ("a forged token", forged.clone()),
        ("a forged token's signature", signature(&forged)),
    ];
    for (what, secret) in secrets {
        if let Some(line) = logs.lines().find(|line| line.contains(&secret)) {
            panic!("{what} appears in a log line: {line}");
        }
    }
}

/// `url` with its user and password replaced by `user` and `password`.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .expect("the test database URL is a URL");
    let host_and_path = rest.split_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{user}:{password}@{host_and_path}")
}

#[tokio::test(flavor = "multi_thread")]
async fn no_database_password_appears_in_any_log_line_or_error() {
    // Arrange: a role with a password, able to do what the test's own role does.
    let app = TestApp::builder().env("RUST_LOG", "debug").spawn().await;
    let role = format!("chronicle_pw_{}", app.id);
    let password = format!("pw{}", uuid::Uuid::new_v4().simple());
    let db = app.db().await;
    let current: String = db
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    db.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' IN ROLE \"{current}\""
    ))
    .await
    .expect("cannot create a role with a password");
    let url = with_credentials(&app.database_url, &role, &password);
    let alice = app.register_user("alice", "Alice").await;

    // Act: a projector and the CLI using the URL with the password (logging at debug level),
    // and the CLI failing with it: a server that is not there, and a URL that does not parse.
    app.start_projector_with(&[("DATABASE_URL", &url), ("RUST_LOG", "debug")])
        .await;
    let post = app.publish_post(&alice, "a post").await;
    app.wait_for(&[alice.position.clone(), post.position.clone()])
        .await;
    let (ok, out, err) = app
        .projector_cli_with(&["status"], &[("DATABASE_URL", &url)])
        .await;
    assert!(ok, "status with the password URL failed: {err}");
    let mut outputs = vec![out, err];
    let closed = chronicle_tests::free_port().expect("a free port");
    let unreachable = with_credentials(
        &format!("postgres://x@127.0.0.1:{closed}/nowhere"),
        &role,
        &password,
    );
    let malformed = format!("postgres://{role}:{password}@127.0.0.1:notaport/x");
    let keywords = format!("host=127.0.0.1 port={closed} user={role} password={password}");
    for bad in [&unreachable, &malformed, &keywords] {
        let (ok, out, err) = app
            .projector_cli_with(
                &["status"],
                &[("DATABASE_URL", bad), ("RUST_BACKTRACE", "1")],
            )
            .await;
        assert!(!ok, "status with {bad:?} succeeded: {out}");
        assert!(
            !err.trim().is_empty(),
            "no error message for a bad DATABASE_URL"
        );
        outputs.push(out);
        outputs.push(err);
    }
    let mut logs = outputs.join("\n");
    for entry in std::fs::read_dir(app.log_dir()).expect("the log directory") {
        let path = entry.expect("a log file").path();
        logs.push_str(&std::fs::read_to_string(&path).expect("a readable log"));
    }
    app.kill_projector();
    db.batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
        .await
        .ok();

    // Assert: the logs say something (the role's name, even), and never the password.
    assert!(
        logs.lines().count() > 20,
        "too little logged to mean anything"
    );
    if let Some(line) = logs.lines().find(|line| line.contains(&password)) {
        panic!("the database password appears in a log line or error: {line}");
    }
}
