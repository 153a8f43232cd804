//! Answers and what tests made: users, posts, responses and assertions on lists.

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

/// Adds one `min_position=` parameter per position.
pub(crate) fn with_positions(mut request: RequestBuilder, positions: &[String]) -> RequestBuilder {
    for position in positions {
        request = request.query(&[("min_position", position)]);
    }
    request
}

/// A registered user.
#[derive(Debug, Clone)]
pub(crate) struct TestUser {
    /// The user id.
    pub(crate) id: String,
    /// The normalised handle.
    pub(crate) handle: String,
    /// The bearer token registration issued.
    pub(crate) token: String,
    /// The position of the `UserRegistered` event.
    pub(crate) position: String,
}

/// A published post.
#[derive(Debug, Clone)]
pub(crate) struct TestPost {
    /// The post id.
    pub(crate) id: String,
    /// The author's user id.
    pub(crate) author: String,
    /// The position of the `PostPublished` event.
    pub(crate) position: String,
}

/// A whole HTTP answer: status, headers and the body as JSON (a JSON string holding the raw
/// text when the body is not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The response headers.
    pub(crate) headers: HeaderMap,
    /// The body.
    pub(crate) body: Value,
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.status, self.content_type(), self.body)
    }
}

impl Resp {
    pub(super) async fn read(response: reqwest::Response) -> Resp {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("failed to read a {status} response body: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    /// The `Content-Type` header, or `""`.
    pub(crate) fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem document's `code`, if any.
    pub(crate) fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// Asserts the status code.
    #[track_caller]
    pub(crate) fn assert_status(&self, expected: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "expected status {expected}, got {self}"
        );
        self
    }

    /// Asserts an RFC 9457 problem document with this status and code.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: u16, code: &str) -> &Resp {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, Some(code)),
            "expected a {status} `{code}` problem, got {self}"
        );
        self.assert_problem_shape();
        self
    }

    /// Asserts the body is a well-formed problem document (any status and code).
    #[track_caller]
    pub(crate) fn assert_problem_shape(&self) -> &Resp {
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "expected Content-Type application/problem+json, got {self}"
        );
        for field in ["type", "title", "detail", "code"] {
            assert!(
                self.body.get(field).is_some_and(Value::is_string),
                "problem document without a string `{field}`: {self}"
            );
        }
        assert_eq!(
            self.body.get("status").and_then(Value::as_u64),
            Some(u64::from(self.status.as_u16())),
            "problem document's `status` differs from the HTTP status: {self}"
        );
        self
    }

    /// A string field of the body.
    #[track_caller]
    pub(crate) fn str_field(&self, name: &str) -> String {
        self.body
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string field `{name}` in {self}"))
            .to_owned()
    }

    /// An integer field of the body.
    #[track_caller]
    pub(crate) fn u64_field(&self, name: &str) -> u64 {
        self.body
            .get(name)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no integer field `{name}` in {self}"))
    }

    /// The `items` of a page.
    #[track_caller]
    pub(crate) fn page_items(&self) -> Vec<Value> {
        self.body
            .get("items")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("not a page (no `items` array): {self}"))
            .clone()
    }

    /// The `next_cursor` of a page (`None` when null).
    #[track_caller]
    pub(crate) fn next_cursor(&self) -> Option<String> {
        match self.body.get("next_cursor") {
            Some(Value::String(cursor)) => Some(cursor.clone()),
            Some(Value::Null) => None,
            _ => panic!("not a page (no `next_cursor` string or null): {self}"),
        }
    }
}

/// The `post_id`s of a page of posts, in order.
#[track_caller]
pub(crate) fn post_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            item.get("post_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("post without `post_id`: {item}"))
                .to_owned()
        })
        .collect()
}

/// The `user_id`s of a page of user summaries, in order.
#[track_caller]
pub(crate) fn user_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            item.get("user_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("user summary without `user_id`: {item}"))
                .to_owned()
        })
        .collect()
}

/// Asserts posts are newest first: `(published_at, post_id)` strictly descending.
#[track_caller]
pub(crate) fn assert_newest_first(items: &[Value], what: &str) {
    let keys: Vec<(String, String)> = items
        .iter()
        .map(|item| {
            let published_at = item
                .get("published_at")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{what}: post without `published_at`: {item}"));
            let instant = chrono::DateTime::parse_from_rfc3339(published_at)
                .unwrap_or_else(|e| {
                    panic!("{what}: published_at {published_at:?} is not RFC 3339: {e}")
                })
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let post_id = item
                .get("post_id")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{what}: post without `post_id`: {item}"));
            (instant, post_id.to_owned())
        })
        .collect();
    for pair in keys.windows(2) {
        assert!(
            pair[0] > pair[1],
            "{what}: not newest first: {:?} comes before {:?}",
            pair[0],
            pair[1]
        );
    }
}
