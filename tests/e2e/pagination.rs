//! Keyset pagination: a reader paging through a feed while new posts arrive sees every post that
//! existed when it started exactly once, newest first, and nothing else.

use crate::harness::{TestApp, TestPost, TestUser, post_ids, user_ids};
use serde_json::Value;

const PAGE: u32 = 7;

/// Reads the first page, lets `between` happen, then follows the cursor to the end.
async fn page_through(
    app: &TestApp,
    path: &str,
    first: Vec<String>,
    first_cursor: Option<String>,
) -> Vec<String> {
    let mut seen = first;
    let mut cursor = first_cursor;
    let mut pages = 1;
    while let Some(next) = cursor {
        let resp = app.get_page(path, Some(PAGE), Some(&next), &[]).await;
        resp.assert_status(200);
        let items = post_ids(&resp.page_items());
        assert!(
            items.len() <= PAGE as usize,
            "GET {path}: page larger than the limit"
        );
        seen.extend(items);
        cursor = resp.next_cursor();
        pages += 1;
        assert!(pages < 100, "GET {path}: the cursor never ends");
    }
    seen
}

fn newest_first(posts: &[TestPost]) -> Vec<String> {
    posts.iter().rev().map(|p| p.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_while_posts_arrive_never_repeats_or_skips() {
    // Arrange: 25 posts by the writer, 5 by someone else in between.
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let other = app.register_user("other", "Other").await;
    let mut everything: Vec<TestPost> = Vec::new();
    let mut by_writer: Vec<TestPost> = Vec::new();
    let publish =
        async |user: &TestUser, n: usize| app.publish_post(user, &format!("post number {n}")).await;
    for n in 0..25 {
        let post = publish(&writer, n).await;
        by_writer.push(post.clone());
        everything.push(post);
        if n % 5 == 2 {
            everything.push(publish(&other, 100 + n).await);
        }
    }
    let mut positions = vec![writer.position.clone(), other.position.clone()];
    positions.extend(everything.iter().map(|p| p.position.clone()));
    app.wait_for(&positions).await;
    let global_before = newest_first(&everything);
    let writer_before = newest_first(&by_writer);
    let writer_feed = format!("/v1/users/{}/posts", writer.id);

    // Act: the first page of each feed...
    let global_first = app.get_page("/v1/feed", Some(PAGE), None, &[]).await;
    global_first.assert_status(200);
    let writer_first = app.get_page(&writer_feed, Some(PAGE), None, &[]).await;
    writer_first.assert_status(200);

    // ...then new posts arrive (and are projected)...
    let mut newer = Vec::new();
    for n in 25..30 {
        newer.push(publish(&writer, n).await);
    }
    newer.push(publish(&other, 200).await);
    app.wait_for(&newer.iter().map(|p| p.position.clone()).collect::<Vec<_>>())
        .await;

    // ...and the readers follow their cursors to the end.
    let global_seen = page_through(
        &app,
        "/v1/feed",
        post_ids(&global_first.page_items()),
        global_first.next_cursor(),
    )
    .await;
    let writer_seen = page_through(
        &app,
        &writer_feed,
        post_ids(&writer_first.page_items()),
        writer_first.next_cursor(),
    )
    .await;

    // Assert: exactly the posts that existed at the first page, in order.
    assert_eq!(
        post_ids(&global_first.page_items()),
        global_before[..PAGE as usize]
    );
    assert_eq!(
        global_seen, global_before,
        "global feed paged while posts arrived"
    );
    assert_eq!(
        writer_seen, writer_before,
        "author feed paged while posts arrived"
    );

    // A fresh read sees everything, newest first.
    everything.extend(newer.iter().cloned());
    by_writer.extend(newer.iter().filter(|p| p.author == writer.id).cloned());
    let fresh_global = app.collect_pages_with("/v1/feed", PAGE, &[]).await;
    assert_eq!(post_ids(&fresh_global), newest_first(&everything));
    let fresh_writer = app.collect_pages(&writer_feed, &[]).await;
    assert_eq!(post_ids(&fresh_writer), newest_first(&by_writer));
    assert_eq!(by_writer.len(), 30);

    // The default page size is 20.
    let default_page = app.get_page("/v1/feed", None, None, &[]).await;
    default_page.assert_status(200);
    assert_eq!(
        post_ids(&default_page.page_items()),
        newest_first(&everything)[..20]
    );
    assert!(default_page.next_cursor().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_that_exactly_fills_the_list_ends_cleanly() {
    // Arrange: exactly two pages' worth of posts.
    let app = TestApp::spawn().await;
    let writer = app.register_user("writer", "Writer").await;
    let mut posts = Vec::new();
    for n in 0..6 {
        posts.push(app.publish_post(&writer, &format!("post {n}")).await);
    }
    let mut positions = vec![writer.position.clone()];
    positions.extend(posts.iter().map(|p| p.position.clone()));

    // Act
    let seen = app.collect_pages_with("/v1/feed", 3, &positions).await;

    // Assert: every post once; following a cursor never yields an error or a repeat.
    assert_eq!(post_ids(&seen), newest_first(&posts));
}

#[tokio::test(flavor = "multi_thread")]
async fn timelines_and_follow_lists_of_few_and_of_hundreds_of_followees_agree_with_the_feed() {
    use futures_util::{StreamExt, stream};

    // Arrange: 205 authors with a post each, a stranger nobody follows, a reader who follows
    // every author (more than the 200 followees up to which the query API merges per-author
    // scans; beyond, it filters the global feed) and one who follows three.
    const AUTHORS: usize = 205;
    let app = TestApp::builder()
        .env("CHRONICLE_RATE_LIMIT_PER_USER", "0")
        .env("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "0")
        .spawn()
        .await;
    let authors: Vec<TestUser> = stream::iter(0..AUTHORS)
        .map(|n| {
            let app = &app;
            async move { app.register_user(&format!("author_{n}"), "Author").await }
        })
        .buffered(16)
        .collect()
        .await;
    let stranger = app.register_user("stranger", "Stranger").await;
    let many = app.register_user("follows_many", "Many").await;
    let few = app.register_user("follows_few", "Few").await;
    let everyone: Vec<&TestUser> = authors.iter().chain([&stranger, &many, &few]).collect();
    let mut positions: Vec<String> = everyone.iter().map(|u| u.position.clone()).collect();
    app.wait_for(&positions).await;
    let posts: Vec<TestPost> = stream::iter(everyone)
        .map(|user| {
            let app = &app;
            async move { app.publish_post(user, &format!("by {}", user.handle)).await }
        })
        .buffered(16)
        .collect()
        .await;
    let follows = authors
        .iter()
        .map(|author| (&many, author))
        .chain(authors[..3].iter().map(|author| (&few, author)));
    let followed: Vec<String> = stream::iter(follows)
        .map(|(follower, author)| {
            let app = &app;
            async move {
                let resp = app.follow(&follower.token, &author.id, &[]).await;
                resp.assert_status(202);
                resp.str_field("position")
            }
        })
        .buffered(16)
        .collect()
        .await;
    positions.extend(posts.iter().map(|p| p.position.clone()));
    positions.extend(followed);
    app.wait_for(&positions).await;

    // Act
    let feed = app.collect_pages("/v1/feed", &[]).await;
    let timeline_of = async |user: &TestUser| {
        let path = format!("/v1/users/{}/timeline", user.id);
        post_ids(&app.collect_pages_with(&path, PAGE, &[]).await)
    };
    let many_timeline = timeline_of(&many).await;
    let few_timeline = timeline_of(&few).await;

    // Assert: each timeline is the global feed, in its order, less the posts of users not
    // followed.
    let profile = app.get_user(&many.id, &[]).await;
    profile.assert_status(200);
    assert_eq!(profile.body["following_count"], AUTHORS as u64);
    let by = |users: &[&TestUser]| -> Vec<String> {
        let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let authored = |post: &Value| {
            post.pointer("/author/user_id")
                .and_then(Value::as_str)
                .is_some_and(|author| ids.contains(&author))
        };
        post_ids(
            &feed
                .iter()
                .filter(|p| authored(p))
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let mut followed_by_many: Vec<&TestUser> = authors.iter().collect();
    followed_by_many.push(&many);
    assert_eq!(feed.len(), AUTHORS + 3);
    assert_eq!(many_timeline, by(&followed_by_many));
    assert_eq!(many_timeline.len(), AUTHORS + 1);
    let few_users = [&authors[0], &authors[1], &authors[2], &few];
    assert_eq!(few_timeline, by(&few_users));
    assert_eq!(few_timeline.len(), 4);

    // The 205 followees, paged by 7, each once.
    let path = format!("/v1/users/{}/following", many.id);
    let mut following = user_ids(&app.collect_pages_with(&path, PAGE, &[]).await);
    following.sort();
    let mut expected: Vec<String> = authors.iter().map(|a| a.id.clone()).collect();
    expected.sort();
    assert_eq!(following, expected);
}
