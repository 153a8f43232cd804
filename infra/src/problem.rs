//! RFC 9457 problem documents: the one shape every error of every service takes.
//!
//! A [`Problem`] carries an HTTP status, a stable snake_case `code` from the contract's table and a
//! human `detail`. Internal failures become a 500 whose body says nothing about the cause; the
//! cause is logged once, here, where the response is made.
//!
//! [`document_shared_problems`] adds to an OpenAPI document the problems that every route can
//! answer because of the layers all routes share (rate limits, the request timeout, the body
//! limit, panics), so that each handler's annotation lists only what its own code answers.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Type};

/// An error answer, rendered as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<Duration>,
}

/// The JSON body of a problem (RFC 9457), as documented in the OpenAPI documents.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody<'a> {
    /// A URI naming the kind of problem: `urn:chronicle:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:chronicle:problem:validation_failed")]
    kind: String,
    /// A short summary of the kind of problem.
    title: &'static str,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong in this occurrence.
    detail: &'a str,
    /// A stable snake_case error code, e.g. `validation_failed`, `stale_read` (each operation
    /// lists its own).
    #[schema(example = "validation_failed")]
    code: &'static str,
}

impl Problem {
    /// A problem with the given status, contract `code` and detail. The title is the one of
    /// the shared codes this crate knows (see [`shared_title`]), or else the status' reason;
    /// a service gives its own codes their titles with [`Problem::titled`].
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            title: shared_title(code)
                .or_else(|| status.canonical_reason())
                .unwrap_or("Error"),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same problem with `title` as its short summary (for a service's own codes).
    pub fn titled(mut self, title: &'static str) -> Problem {
        self.title = title;
        self
    }

    /// 400 `invalid_body`: the body is not JSON of the expected shape.
    pub fn invalid_body(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_body", detail)
    }

    /// 422 `validation_failed`: well-formed, but a value breaks a field rule.
    pub fn validation(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        )
    }

    /// 400 `validation_failed`: a path or query parameter is malformed.
    pub fn bad_parameter(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 404 with a specific code (`not_found`, or a service's own, e.g. `post_not_found`).
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 503 `stale_read`: the read models did not reach the requested positions in time.
    pub fn stale_read(waited: Duration) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stale_read",
            format!(
                "the read models did not reach the requested position within {} ms",
                waited.as_millis()
            ),
        )
        .with_retry_after(Duration::from_secs(1))
    }

    /// 503 `database_unavailable`.
    pub fn database_unavailable() -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database cannot be reached, try again shortly",
        )
        .with_retry_after(Duration::from_secs(1))
    }

    /// 500 `internal`. Logs `cause`; the answer says nothing about it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// Adds a `Retry-After` header (whole seconds, at least 1).
    pub fn with_retry_after(mut self, after: Duration) -> Problem {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// The titles of the codes every service shares (those of the layers and plumbing in this
/// crate); the services title their own domain codes ([`Problem::titled`]).
fn shared_title(code: &str) -> Option<&'static str> {
    Some(match code {
        "invalid_body" => "The request body is not valid",
        "validation_failed" => "A value is not valid",
        "invalid_position" => "The position is not valid",
        "unauthorized" => "Authentication is required",
        "payload_too_large" => "The request body is too large",
        "rate_limited" => "Too many requests",
        "stale_read" => "The read models are behind",
        "broker_unavailable" => "The event log is unavailable",
        "database_unavailable" => "The database is unavailable",
        "method_not_allowed" => "Method not allowed",
        "not_found" => "Not found",
        "internal" => "Internal error",
        _ => return None,
    })
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:chronicle:problem:{}", self.code),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}

impl From<axum::extract::rejection::PathRejection> for Problem {
    /// A path parameter that cannot be read (not UTF-8 once percent-decoded, or not of the
    /// expected type) is a 400 `validation_failed`, as a problem document: axum's own rejection
    /// is plain text.
    fn from(rejection: axum::extract::rejection::PathRejection) -> Problem {
        if rejection.status().is_server_error() {
            Problem::internal(&rejection.body_text())
        } else {
            Problem::bad_parameter(rejection.body_text())
        }
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(err: deadpool_postgres::PoolError) -> Problem {
        tracing::warn!(error = %err, "no database connection");
        Problem::database_unavailable()
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(err: tokio_postgres::Error) -> Problem {
        // A lost connection, a server shutting down or restarting, or a deadlock: worth a retry.
        if crate::db::is_transient(&err) {
            match err.as_db_error() {
                Some(db) => tracing::warn!(error = %db, "database unavailable"),
                None => tracing::warn!(error = %err, "database unavailable"),
            }
            Problem::database_unavailable()
        } else {
            // `Display` of a tokio-postgres error is only "db error"; log what the server said.
            match err.as_db_error() {
                Some(db) => Problem::internal(&format_args!("{err}: {db}")),
                None => Problem::internal(&err),
            }
        }
    }
}

/// The media type of every problem.
const PROBLEM_JSON: &str = "application/problem+json";

/// Documents, on every operation of `openapi`, the problems that come from the layers every
/// route shares rather than from its handler:
///
/// - 401 `unauthorized` where the operation needs a token, 415 `invalid_body` where it takes a
///   request body (the body must be JSON);
/// - 408 `invalid_body`, a body that did not arrive within `CHRONICLE_REQUEST_TIMEOUT_MS`, and
///   413 `payload_too_large`, a body over 64 KiB (every request's body is read, whatever the
///   method);
/// - 429 `rate_limited` and 503 (`database_unavailable` when a request is still being handled
///   after `CHRONICLE_REQUEST_TIMEOUT_MS`), both with a `Retry-After` header;
/// - 500 `internal`.
///
/// A status an operation already documents keeps its description; its 429 and 503 gain the
/// `Retry-After` header.
pub fn document_shared_problems(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            document_operation(operation);
        }
    }
}

fn document_operation(operation: &mut Operation) {
    let needs_token = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let takes_body = operation.request_body.is_some();
    let mut shared = Vec::new();
    if needs_token {
        shared.push(("401", "Missing or invalid bearer token (`unauthorized`)"));
    }
    shared.push((
        "408",
        "The request body did not arrive within `CHRONICLE_REQUEST_TIMEOUT_MS` (`invalid_body`)",
    ));
    shared.push((
        "413",
        "The request body is over 64 KiB (`payload_too_large`)",
    ));
    if takes_body {
        shared.push((
            "415",
            "The request body is not JSON (`Content-Type` must be `application/json`) \
             (`invalid_body`)",
        ));
    }
    shared.push((
        "429",
        "Too many requests from this client address, or by this user (`rate_limited`); retry \
         after `Retry-After` seconds",
    ));
    shared.push(("500", "An internal error; it has been logged (`internal`)"));
    shared.push((
        "503",
        "The database is unavailable, or the request took longer than \
         `CHRONICLE_REQUEST_TIMEOUT_MS` (`database_unavailable`); retry after `Retry-After` \
         seconds",
    ));
    let responses = &mut operation.responses.responses;
    for (status, description) in shared {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem_response(description)));
    }
    for status in ["429", "503"] {
        if let Some(RefOr::T(response)) = responses.get_mut(status) {
            response
                .headers
                .entry("Retry-After".to_owned())
                .or_insert_with(|| RefOr::T(retry_after()));
        }
    }
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    let mut response = utoipa::openapi::Response::new(description);
    response.content.insert(
        PROBLEM_JSON.to_owned(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("Problem")))),
    );
    response
}

fn retry_after() -> Header {
    let mut header = Header::new(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1)),
    );
    header.description = Some("Whole seconds to wait before retrying".to_owned());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_problem_json_with_retry_after() {
        let response = Problem::stale_read(Duration::from_millis(2000)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[utoipa::path(post, path = "/things", request_body = String, security(("bearer" = [])),
        responses((status = 202, description = "Accepted"),
            (status = 503, description = "Mine", body = ProblemBody, content_type = "application/problem+json")))]
    #[allow(dead_code)]
    fn post_thing() {}

    #[utoipa::path(get, path = "/things", responses((status = 200, description = "Things")))]
    #[allow(dead_code)]
    fn get_things() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(post_thing, get_things), components(schemas(ProblemBody)))]
    struct Doc;

    #[test]
    fn shared_problems_are_documented_on_every_operation() {
        use utoipa::OpenApi;
        let mut document = Doc::openapi();
        document_shared_problems(&mut document);
        let json = serde_json::to_value(&document).expect("serialises");
        let post = &json["paths"]["/things"]["post"]["responses"];
        let get = &json["paths"]["/things"]["get"]["responses"];
        for status in ["202", "401", "408", "413", "415", "429", "500", "503"] {
            assert!(post[status].is_object(), "post lacks {status}");
        }
        for status in ["200", "408", "413", "429", "500", "503"] {
            assert!(get[status].is_object(), "get lacks {status}");
        }
        assert!(get["401"].is_null() && get["415"].is_null());
        assert_eq!(post["503"]["description"], "Mine");
        for status in ["429", "503"] {
            assert_eq!(
                post[status]["headers"]["Retry-After"]["schema"]["type"],
                "integer"
            );
            assert_eq!(
                post[status]["content"][PROBLEM_JSON]["schema"]["$ref"],
                "#/components/schemas/Problem"
            );
        }
    }
}
