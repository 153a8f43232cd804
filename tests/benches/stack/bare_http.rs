//! The bare HTTP baseline of command ingest: the least an HTTP service can do to turn a
//! command into an acknowledged event. A minimal axum handler per route of the command mix
//! builds the event the command API would build (so the record has the same size, key and
//! headers), produces it with the command API's producer settings, and answers 202 with its
//! position once the broker has acknowledged it: no token check (the actor is a fresh id), no
//! validation, no database, no middleware.
//!
//! It runs as a process of its own, like the command API: the benchmark binary started again
//! with [`FLAG`] (`std::env::current_exe()`). That keeps the baseline next to the benchmark
//! that uses it and built with it in the same release profile, keeps axum out of the test
//! library the e2e tests link, and gives it its own runtime, sockets and PID, so that its CPU
//! and memory are counted apart from the load generator's.

use std::process::Child;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chronicle_events::{Envelope, Event, PostLiked, PostPublished, PostUnliked, UserFollowed};
use chronicle_tests::bench::{Fixture, Result, command_api_producer, send_as_command_api, spawn};
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::services::{free_address, stop_child, wait_healthy};

/// The argument that makes the benchmark binary serve the baseline instead of benchmarking.
pub(crate) const FLAG: &str = "--bare-command-api";
/// Where the baseline listens (set by [`BareHttp::start`]).
const ADDR_VAR: &str = "CHRONICLE_BENCH_BARE_ADDR";

#[derive(Clone)]
struct Bare {
    producer: FutureProducer,
    topic: Arc<str>,
}

impl Bare {
    /// Produces `event`, caused by a fresh actor, and answers as the command API does.
    async fn append(&self, event: Event, post: Option<Uuid>) -> Response {
        let envelope = Envelope::new(Uuid::now_v7(), event);
        match send_as_command_api(&self.producer, &self.topic, &envelope).await {
            Ok((partition, offset)) => {
                let mut bytes = [0u8; 12];
                bytes[..4].copy_from_slice(&partition.to_be_bytes());
                bytes[4..].copy_from_slice(&offset.to_be_bytes());
                let position = URL_SAFE_NO_PAD.encode(bytes);
                let body = match post {
                    Some(post_id) => json!({ "post_id": post_id, "position": position }),
                    None => json!({ "position": position }),
                };
                (StatusCode::ACCEPTED, Json(body)).into_response()
            }
            Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err).into_response(),
        }
    }
}

async fn like(State(bare): State<Bare>, Path(post_id): Path<Uuid>) -> Response {
    let user_id = Uuid::now_v7();
    bare.append(Event::PostLiked(PostLiked { post_id, user_id }), None)
        .await
}

async fn unlike(State(bare): State<Bare>, Path(post_id): Path<Uuid>) -> Response {
    let user_id = Uuid::now_v7();
    bare.append(Event::PostUnliked(PostUnliked { post_id, user_id }), None)
        .await
}

async fn publish(State(bare): State<Bare>, Json(request): Json<Value>) -> Response {
    let post_id = Uuid::now_v7();
    let body = request["body"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let event = Event::PostPublished(PostPublished {
        post_id,
        author_id: Uuid::now_v7(),
        body: body.into(),
        reply_to: None,
    });
    bare.append(event, Some(post_id)).await
}

async fn follow(State(bare): State<Bare>, Path(followee_id): Path<Uuid>) -> Response {
    let event = Event::UserFollowed(UserFollowed {
        follower_id: Uuid::now_v7(),
        followee_id,
    });
    bare.append(event, None).await
}

/// Serves the baseline until SIGTERM, then flushes the producer (in the re-executed binary).
pub(crate) async fn serve() -> Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").map_err(|_| "KAFKA_BROKERS is not set")?;
    let topic = std::env::var("CHRONICLE_TOPIC").map_err(|_| "CHRONICLE_TOPIC is not set")?;
    let addr = std::env::var(ADDR_VAR).map_err(|_| format!("{ADDR_VAR} is not set"))?;
    let bare = Bare {
        producer: command_api_producer(&brokers)?,
        topic: topic.into(),
    };
    let router = Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/v1/posts", post(publish))
        .route("/v1/posts/{post_id}/like", put(like).delete(unlike))
        .route("/v1/users/me/following/{user_id}", put(follow))
        .with_state(bare.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare command API listening on http://{addr}");
    let terminated = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated)
        .await?;
    let producer = bare.producer.clone();
    tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(10)))
        .await??;
    Ok(())
}

/// The baseline running as a child process.
pub(crate) struct BareHttp {
    child: Child,
    /// Its base URL.
    pub(crate) base: String,
}

impl BareHttp {
    /// Starts the baseline on the fixture's topic and waits until it answers.
    pub(crate) async fn start(fixture: &Fixture, http: &reqwest::Client) -> Result<BareHttp> {
        let addr = free_address()?;
        let vars = [
            ("KAFKA_BROKERS", fixture.brokers.clone()),
            ("CHRONICLE_TOPIC", fixture.topic.clone()),
            (ADDR_VAR, addr.clone()),
        ];
        let child = spawn("bare-command-api", std::env::current_exe()?, &[FLAG], &vars)?;
        let bare = BareHttp {
            child,
            base: format!("http://{addr}"),
        };
        wait_healthy(http, &bare.base).await?;
        Ok(bare)
    }

    /// Its PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareHttp {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
