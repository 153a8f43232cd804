//! Live streams (server-sent events), read with the harness's `EventSource`-like client: each
//! message goes out once the read models have applied its event; a timeline carries its user's
//! and their followees' posts; notifications reach their recipient alone; a client resumes from
//! its last id exactly once across restarts of the query API and the projector; a client that
//! does not keep up is cut off and resumes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{EventStream, TestApp, TestPost};

/// Long enough for a loaded machine; every wait ends as soon as its message arrives.
const PATIENCE: Duration = Duration::from_secs(60);

/// A Chronicle whose streams send a heartbeat every 300 ms.
async fn spawn() -> TestApp {
    TestApp::builder()
        .env("CHRONICLE_STREAM_HEARTBEAT_MS", "300")
        .spawn()
        .await
}

/// The next message, asserting one comes.
async fn next(stream: &mut EventStream) -> (String, Value) {
    stream
        .next_message(PATIENCE)
        .await
        .expect("a message within the patience")
}

/// Collects `post` messages until every post of `expected` has come, asserting none comes twice,
/// none that was not expected, and those of each partition in log order.
async fn receive_posts(stream: &mut EventStream, expected: &[TestPost]) -> Vec<String> {
    let wanted: HashMap<&str, (i32, i64)> = expected
        .iter()
        .map(|post| (post.id.as_str(), place_of(&post.position)))
        .collect();
    let mut seen = Vec::new();
    let mut latest: HashMap<i32, i64> = HashMap::new();
    while seen.len() < wanted.len() {
        let (event, data) = next(stream).await;
        assert_eq!(event, "post", "{data}");
        let id = data["post_id"].as_str().expect("post_id").to_owned();
        let (partition, offset) = *wanted
            .get(id.as_str())
            .unwrap_or_else(|| panic!("unexpected post {data}"));
        assert!(!seen.contains(&id), "post {id} came twice");
        let before = latest.insert(partition, offset);
        assert!(before < Some(offset), "partition {partition} out of order");
        seen.push(id);
    }
    seen
}

/// The (partition, offset) a position names (base64url of both, big-endian).
fn place_of(position: &str) -> (i32, i64) {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(position)
        .expect("a position");
    let partition = i32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    let offset = i64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
    (partition, offset)
}

#[tokio::test]
async fn the_feed_stream_sends_a_post_once_it_is_applied_then_its_deletion() {
    let app = spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let mut feed = app.open_stream("/v1/feed/stream", None, None).await;

    let post = app.publish_post(&alice, "hello, stream").await;
    let (event, data) = next(&mut feed).await;
    assert_eq!(event, "post");
    // Sent only once applied: a read without min_position already shows it, and says the same.
    let read = app.get_post(&post.id, &[]).await;
    read.assert_status(200);
    assert_eq!(data, read.body);
    assert!(feed.last_id.is_some());

    let deleted = app.delete_post(&alice.token, &post.id, &[]).await;
    deleted.assert_status(202);
    let (event, data) = next(&mut feed).await;
    assert_eq!(event, "post_deleted");
    assert_eq!(data, serde_json::json!({ "post_id": post.id }));
    app.get_post(&post.id, &[])
        .await
        .assert_problem(404, "post_not_found");
}

#[tokio::test]
async fn a_timeline_stream_carries_its_users_and_their_followees_posts_only() {
    let app = spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;
    let carol = app.register_user("carol", "Carol").await;
    let follow = app
        .follow(&alice.token, &bob.id, std::slice::from_ref(&bob.position))
        .await;
    follow.assert_status(202);
    app.wait_for(&[follow.str_field("position")]).await;
    let path = format!("/v1/users/{}/timeline/stream", alice.id);
    let mut timeline = app.open_stream(&path, None, None).await;

    let carols = app.publish_post(&carol, "not followed").await;
    let bobs = app.publish_post(&bob, "followed").await;
    let alices = app.publish_post(&alice, "her own").await;
    app.wait_for(&[carols.position, bobs.position, alices.position])
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(
            timeline
                .messages_until_heartbeat(PATIENCE)
                .await
                .into_iter()
                .map(|(event, data)| (event, data["author"]["user_id"].clone())),
        );
    }
    // Carol's post was applied before the others were published, so it would have come first.
    got.extend(
        timeline
            .messages_until_heartbeat(PATIENCE)
            .await
            .into_iter()
            .map(|(event, data)| (event, data["author"]["user_id"].clone())),
    );
    let authors: HashSet<(String, String)> = got
        .iter()
        .map(|(event, author)| (event.clone(), author.as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        authors,
        HashSet::from([
            ("post".to_owned(), bob.id.clone()),
            ("post".to_owned(), alice.id.clone())
        ])
    );

    app.get(
        &format!("/v1/users/{}/timeline/stream", uuid::Uuid::now_v7()),
        &[],
    )
    .await
    .assert_problem(404, "user_not_found");
}

#[tokio::test]
async fn notifications_stream_to_their_recipient_alone() {
    let app = spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;
    app.get("/v1/me/notifications/stream", &[])
        .await
        .assert_problem(401, "unauthorized");
    let mut alices = app
        .open_stream("/v1/me/notifications/stream", None, Some(&alice.token))
        .await;
    let mut bobs = app
        .open_stream("/v1/me/notifications/stream", None, Some(&bob.token))
        .await;

    let post = app.publish_post(&alice, "like me").await;
    let liked = app
        .like(&bob.token, &post.id, std::slice::from_ref(&post.position))
        .await;
    liked.assert_status(202);
    // Liking her own post notifies nobody.
    let own = app
        .like(&alice.token, &post.id, std::slice::from_ref(&post.position))
        .await;
    own.assert_status(202);
    let (event, data) = next(&mut alices).await;
    assert_eq!(event, "notification");
    assert_eq!(data["kind"], "liked");
    assert_eq!(data["actor"]["user_id"], bob.id.as_str());
    assert_eq!(data["post_id"], post.id.as_str());
    assert_eq!(data["read"], false);
    let listed = app
        .send(app.query("/v1/me/notifications").bearer_auth(&alice.token))
        .await;
    assert_eq!(listed.page_items(), vec![data]);

    app.wait_for(&[own.str_field("position")]).await;
    assert!(alices.messages_until_heartbeat(PATIENCE).await.is_empty());
    assert!(bobs.messages_until_heartbeat(PATIENCE).await.is_empty());
}

#[tokio::test]
async fn a_stream_resumes_after_its_last_id_exactly_once_across_restarts() {
    let app = spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    app.wait_for(std::slice::from_ref(&alice.position)).await;
    let mut feed = app.open_stream("/v1/feed/stream", None, None).await;

    let mut first = Vec::new();
    for i in 0..6 {
        first.push(app.publish_post(&alice, &format!("first {i}")).await);
    }
    // Three of them (whichever partitions come first), then the client goes away.
    let mut got = Vec::new();
    while got.len() < 3 {
        let (event, data) = next(&mut feed).await;
        assert_eq!(event, "post");
        got.push(data["post_id"].as_str().expect("post_id").to_owned());
    }
    let last_id = feed.last_id.clone().expect("an id");
    drop(feed);

    // While the client is away: the query API and the projector die; posts go on.
    app.kill_query_api();
    let mut second = Vec::new();
    for i in 0..4 {
        second.push(app.publish_post(&alice, &format!("second {i}")).await);
    }
    app.restart_projector().await;
    for i in 0..4 {
        second.push(app.publish_post(&alice, &format!("third {i}")).await);
    }
    app.start_query_api().await;

    // What it missed: the three of `first` it had not received, then all of `second`, each
    // once, each partition's in log order.
    let missed: Vec<TestPost> = first
        .iter()
        .filter(|post| !got.contains(&post.id))
        .chain(&second)
        .cloned()
        .collect();
    let mut resumed = app
        .open_stream("/v1/feed/stream", Some(&last_id), None)
        .await;
    receive_posts(&mut resumed, &missed).await;
    assert!(resumed.messages_until_heartbeat(PATIENCE).await.is_empty());

    // `?after=` does the same as the header, and a quiet stream's heartbeat id keeps up: from
    // it, nothing is sent again.
    let after = resumed.last_id.clone().expect("an id");
    let mut again = app
        .open_stream(&format!("/v1/feed/stream?after={after}"), None, None)
        .await;
    assert!(again.messages_until_heartbeat(PATIENCE).await.is_empty());
    let more = app.publish_post(&alice, "after all that").await;
    receive_posts(&mut again, std::slice::from_ref(&more)).await;
}

#[tokio::test]
async fn a_resume_id_the_service_did_not_make_is_a_400() {
    let app = spawn().await;
    for id in ["nope!", "AQ", "____________"] {
        let resp = app
            .send(app.query("/v1/feed/stream").header("last-event-id", id))
            .await;
        resp.assert_problem(400, "invalid_cursor");
        let resp = app
            .send(app.query("/v1/feed/stream").query(&[("after", id)]))
            .await;
        resp.assert_problem(400, "invalid_cursor");
    }
}

/// Opens the feed stream on a socket that reads nothing after the response head, with the
/// smallest receive buffer the kernel allows.
async fn stalled_feed(app: &TestApp) -> tokio::net::TcpStream {
    let address = app.query_url.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(1024).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(address.parse().expect("address"))
        .await
        .expect("connect");
    let request =
        format!("GET /v1/feed/stream HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    stream
}

#[tokio::test]
async fn a_client_that_does_not_keep_up_is_cut_off_and_resumes_from_its_last_id() {
    let app = TestApp::builder()
        .env("CHRONICLE_STREAM_HEARTBEAT_MS", "300")
        .env("CHRONICLE_STREAM_BUFFER", "64")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    app.wait_for(std::slice::from_ref(&alice.position)).await;
    let mut stalled = stalled_feed(&app).await;
    let mut keeping_up = app.open_stream("/v1/feed/stream", None, None).await;

    // 4,000-byte posts: the socket's and the server's write buffers fill after a few hundred.
    let body = "\u{1F600}".repeat(1000);
    let mut posts = Vec::new();
    let mut cut = false;
    for round in 0..20 {
        for _ in 0..50 {
            posts.push(app.publish_post(&alice, &body).await);
        }
        receive_posts(&mut keeping_up, &posts[round * 50..]).await;
        let metrics = app.get("/metrics", &[]).await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        if text
            .lines()
            .any(|line| line.starts_with("stream_clients_cut_total") && !line.ends_with(" 0"))
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "the stalled client was not cut off after {} posts",
        posts.len()
    );

    // The stalled client now reads: what the server held for it, then the end of the stream.
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut received))
        .await
        .expect("the server ends the stream of a client it cut off")
        .expect("read");
    let text = String::from_utf8_lossy(&received);
    let last_id = text
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .next_back()
        .expect("an id")
        .to_owned();
    let got: HashSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|data| data["post_id"].as_str().map(str::to_owned))
        .collect();
    assert!(got.len() < posts.len(), "it was cut before the end");

    // Resuming from its last id brings exactly what it did not get.
    let missed: Vec<TestPost> = posts
        .iter()
        .filter(|post| !got.contains(&post.id))
        .cloned()
        .collect();
    let mut resumed = app
        .open_stream("/v1/feed/stream", Some(&last_id), None)
        .await;
    receive_posts(&mut resumed, &missed).await;
    assert!(resumed.messages_until_heartbeat(PATIENCE).await.is_empty());
}

#[tokio::test]
async fn posts_and_notifications_wait_for_their_authors_registration() {
    use chronicle_events::{Envelope, Event, PostLiked, PostPublished, UserRegistered};
    use uuid::Uuid;

    // Arrange: a user whose registration the projector has not applied yet (it sits in
    // another partition, or comes later), who has already posted and liked Alice's post.
    let app = spawn().await;
    let alice = app.register_user("alice", "Alice").await;
    let liked_post = app.publish_post(&alice, "like me").await;
    app.wait_for(std::slice::from_ref(&liked_post.position))
        .await;
    let mut feed = app.open_stream("/v1/feed/stream", None, None).await;
    let mut alices = app
        .open_stream("/v1/me/notifications/stream", None, Some(&alice.token))
        .await;
    let carol = Uuid::now_v7();
    let post = Uuid::now_v7();
    let posted = Envelope::new(
        carol,
        Event::PostPublished(PostPublished {
            post_id: post,
            author_id: carol,
            body: "before I existed".into(),
            reply_to: None,
        }),
    );
    let liked = Envelope::new(
        carol,
        Event::PostLiked(PostLiked {
            post_id: liked_post.id.parse().expect("a uuid"),
            user_id: carol,
        }),
    );
    let posted_at = app
        .produce_raw(&post.to_string(), None, &posted.to_json())
        .await;
    let liked_at = app
        .produce_raw(&liked_post.id, None, &liked.to_json())
        .await;
    app.wait_for(&[posted_at, liked_at]).await;
    // Reads do not show them yet, and neither do streams (which may still bring Alice's post:
    // a stream starts from where the query API's streams are, a moment behind the reads).
    let carols = |messages: Vec<(String, Value)>| {
        messages
            .into_iter()
            .filter(|(_, data)| {
                data["post_id"] == post.to_string().as_str()
                    || data["actor"]["user_id"] == carol.to_string().as_str()
            })
            .count()
    };
    assert_eq!(carols(feed.messages_until_heartbeat(PATIENCE).await), 0);
    assert_eq!(carols(alices.messages_until_heartbeat(PATIENCE).await), 0);

    // Act: her registration is applied.
    let registered = Envelope::new(
        carol,
        Event::UserRegistered(UserRegistered {
            user_id: carol,
            handle: "carol".into(),
            display_name: "Carol".into(),
            bio: String::new().into(),
        }),
    );
    let registered_at = app
        .produce_raw(&carol.to_string(), None, &registered.to_json())
        .await;

    // Assert: both come then, as the reads show them.
    let (event, data) = next(&mut feed).await;
    assert_eq!(event, "post");
    assert_eq!(data["post_id"], post.to_string().as_str());
    let read = app
        .get_post(&post.to_string(), std::slice::from_ref(&registered_at))
        .await;
    read.assert_status(200);
    assert_eq!(data, read.body);
    let (event, data) = next(&mut alices).await;
    assert_eq!(event, "notification");
    assert_eq!(data["kind"], "liked");
    assert_eq!(data["actor"]["user_id"], carol.to_string().as_str());
}

#[tokio::test]
async fn a_query_api_told_to_stop_ends_its_streams_and_exits() {
    let app = spawn().await;
    let mut feed = app.open_stream("/v1/feed/stream", None, None).await;
    assert!(feed.messages_until_heartbeat(PATIENCE).await.is_empty());

    let (status, took) = app
        .terminate_query_api(Duration::from_secs(10))
        .await
        .expect("the query API exits within 10 s of SIGTERM with a stream open");
    assert!(status.success(), "{status}");
    assert!(
        feed.next_block(PATIENCE).await.is_none(),
        "the stream ended"
    );
    println!("exited {took:?} after SIGTERM");
}
