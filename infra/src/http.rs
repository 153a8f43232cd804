//! HTTP plumbing shared by the services: binding and serving with graceful shutdown, the common
//! middleware (request ids, tracing, panics as problems, metrics, the body limit), and the small
//! parsers every handler needs (JSON bodies, path segments, ids, query strings, positions).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::{Position, Problem};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the process-wide Prometheus recorder and returns the handle `/metrics` renders.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()
        .context("failed to install the metrics recorder")
}

/// Adds what every service has: `/healthz`, `/metrics`, `/openapi.json` and `/docs` (when given), problem
/// documents for unknown routes and methods, the body limit, request ids, request tracing,
/// metrics and panic safety.
pub fn with_common_layers(
    router: Router,
    metrics: PrometheusHandle,
    openapi: Option<utoipa::openapi::OpenApi>,
) -> Router {
    let router = match openapi {
        Some(document) => {
            let json = Bytes::from(document.to_json().unwrap_or_default());
            router
                .route(
                    "/openapi.json",
                    get(move || {
                        std::future::ready((
                            [(header::CONTENT_TYPE, "application/json")],
                            json.clone(),
                        ))
                    }),
                )
                .route(
                    "/docs",
                    get(|| std::future::ready(axum::response::Html(crate::apidoc::DOCS_PAGE))),
                )
        }
        None => router,
    };
    router
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .fallback(|| async { Problem::not_found("not_found", "no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not support that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                Problem::internal(&"a request handler panicked").into_response()
            },
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels = [
        ("route", route),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    name: &'static str,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind {addr}"))?;
        Ok(Server { listener, name })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves `router` until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(service = self.name, "listening on http://{addr}");
        // Answers go out as soon as they are written: without TCP_NODELAY, Nagle's algorithm
        // holds a small write back while an earlier one is unacknowledged, and the client
        // acknowledges late (delayed ACKs, 40 ms or more), which a live stream's run of small
        // messages hits every time.
        let listener = self.listener.tap_io(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
            }
        });
        // Connect info gives the rate limit per client address its key.
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed")
    }
}

/// A JSON request body of type `T`, read strictly: the content type, if given, must be JSON;
/// the body must be at most 64 KiB; unknown fields are refused by `T`'s deserializer.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let is_json = content_type
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase())
                .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
            if !is_json {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_body",
                    "the body must be JSON (Content-Type: application/json)",
                ));
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    payload_too_large()
                } else {
                    Problem::invalid_body(format!("the body could not be read: {rejection}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|err| Problem::invalid_body(format!("the body is not valid: {err}")))
    }
}

/// 413 `payload_too_large`.
pub fn payload_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
    )
}

/// One path parameter, as text. A segment that is not UTF-8 once percent-decoded is a 400
/// `validation_failed` problem document, like every other malformed parameter (axum's own
/// `Path` rejection is plain text).
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Segment, Problem> {
        let Path(value) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Segment(value))
    }
}

/// Parses an id from a path segment; anything but a UUID is a 400 naming the parameter.
pub fn parse_id(name: &str, raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::bad_parameter(format!("{name} must be a UUID")))
}

/// The decoded `key=value` pairs of a query string, repeated keys kept in order.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, Problem> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| Problem::bad_parameter("the query string is malformed"))
}

/// Every `min_position` in the query.
pub fn min_positions(pairs: &[(String, String)]) -> Result<Vec<Position>, Problem> {
    pairs
        .iter()
        .filter(|(key, _)| key == "min_position")
        .map(|(_, value)| {
            Position::decode(value).map_err(|err| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_position", err.to_string())
            })
        })
        .collect()
}

/// The `min_position` query parameter, as documented in the OpenAPI documents.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MinPositions {
    /// Answer only once the read models include this position (a `position` returned by a
    /// command); repeat for several. Waits at most `CHRONICLE_CONSISTENCY_WAIT_MS`, then
    /// answers 503 `stale_read`.
    #[param(explode = true, style = Form)]
    pub min_position: Option<Vec<String>>,
}

/// Waits until the read models include every position, or answers 503 `stale_read`.
pub async fn wait_for_positions(
    progress: &crate::progress::Progress,
    positions: &[Position],
    patience: Duration,
) -> Result<(), Problem> {
    if progress.wait_for(positions, patience).await {
        Ok(())
    } else {
        Err(Problem::stale_read(patience))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_segment_that_is_not_utf8_is_a_problem_document() {
        async fn echo(Segment(value): Segment) -> String {
            value
        }
        let app = axum::Router::new().route("/things/{id}", axum::routing::get(echo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
                )
                .expect("write");
                let mut response = String::new();
                stream.read_to_string(&mut response).expect("read");
                response
            })
        };
        let bad = get("/things/%FF").await.expect("join");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        assert!(bad.contains("application/problem+json"), "{bad}");
        assert!(bad.contains("\"validation_failed\""), "{bad}");
        let good = get("/things/a%20b").await.expect("join");
        assert!(
            good.starts_with("HTTP/1.1 200") && good.ends_with("a b"),
            "{good}"
        );
    }

    #[test]
    fn repeated_min_positions_are_all_read() {
        let a = Position {
            partition: 1,
            offset: 2,
        }
        .encode();
        let b = Position {
            partition: 3,
            offset: 4,
        }
        .encode();
        let query = format!("min_position={a}&limit=5&min_position={b}");
        let pairs = query_pairs(Some(&query)).expect("pairs");
        let positions = min_positions(&pairs).expect("positions");
        assert_eq!(positions.len(), 2);
        assert_eq!(
            positions[1],
            Position {
                partition: 3,
                offset: 4
            }
        );
    }

    #[test]
    fn a_bad_position_is_invalid_position() {
        let pairs = query_pairs(Some("min_position=nope")).expect("pairs");
        let problem = min_positions(&pairs).expect_err("invalid");
        assert_eq!(problem.code(), "invalid_position");
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
    }
}
