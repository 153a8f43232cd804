//! RFC 9457 problem documents: the one shape every error of every service takes.
//!
//! A [`Problem`] carries an HTTP status, a stable snake_case `code` from the contract's table and a
//! human `detail`. Internal failures become a 500 whose body says nothing about the cause; the
//! cause is logged once, here, where the response is made.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer, rendered as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<Duration>,
}

/// The JSON body of a problem (RFC 9457), as documented in the OpenAPI documents.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody<'a> {
    /// A URI naming the kind of problem: `urn:chronicle:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:chronicle:problem:post_not_found")]
    kind: String,
    /// A short summary of the kind of problem.
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong in this occurrence.
    detail: &'a str,
    /// A stable snake_case error code, e.g. `validation_failed`, `handle_taken`, `stale_read`.
    #[schema(example = "post_not_found")]
    code: &'static str,
}

impl Problem {
    /// A problem with the given status, contract `code` and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
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

    /// 404 with a specific code (`user_not_found`, `post_not_found`, `not_found`).
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

fn title(code: &str) -> &'static str {
    match code {
        "invalid_body" => "The request body is not valid",
        "validation_failed" => "A value is not valid",
        "invalid_position" => "The position is not valid",
        "invalid_cursor" => "The cursor is not valid",
        "unauthorized" => "Authentication is required",
        "forbidden" => "This is not yours",
        "user_not_found" => "No such user",
        "post_not_found" => "No such post",
        "handle_taken" => "The handle is taken",
        "cannot_follow_self" => "You cannot follow yourself",
        "payload_too_large" => "The request body is too large",
        "rate_limited" => "Too many requests",
        "stale_read" => "The read models are behind",
        "broker_unavailable" => "The event log is unavailable",
        "database_unavailable" => "The database is unavailable",
        "method_not_allowed" => "Method not allowed",
        "not_found" => "Not found",
        _ => "Internal error",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:chronicle:problem:{}", self.code),
            title: title(self.code),
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

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(err: deadpool_postgres::PoolError) -> Problem {
        tracing::warn!(error = %err, "no database connection");
        Problem::database_unavailable()
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(err: tokio_postgres::Error) -> Problem {
        let io_failure =
            std::error::Error::source(&err).is_some_and(|source| source.is::<std::io::Error>());
        if err.is_closed() || io_failure {
            tracing::warn!(error = %err, "database connection failed");
            Problem::database_unavailable()
        } else {
            Problem::internal(&err)
        }
    }
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
}
