//! Keyset pagination: a reader paging through a feed while new posts arrive sees every post that
//! existed when it started exactly once, newest first, and nothing else.

use crate::harness::{TestApp, TestPost, TestUser, post_ids};

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
