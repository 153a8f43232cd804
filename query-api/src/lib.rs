//! The query API: serves profiles, feeds, search and a user's notifications from the read
//! models.
//!
//! It never writes: its database sessions are read-only (`default_transaction_read_only`), and it
//! talks to no broker. Reads never wait, unless the client asks for `min_position`; then the
//! answer waits, woken by the projector's notifications, until the read models include those
//! positions, or answers 503 `stale_read`.

mod cursor;
mod handlers;
mod notifications;
mod openapi;
mod search;
mod stream;

pub use openapi::document as openapi_document;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chronicle_infra::db::DatabaseArgs;
use chronicle_infra::http::{Server, install_metrics, with_common_layers};
use chronicle_infra::limit::{LimitArgs, limit_requests};
use chronicle_infra::progress::Progress;
use chronicle_infra::session::Sessions;
use chronicle_infra::telemetry::LogFormat;
use chronicle_infra::token::{self, PublicKey, Verifier};
use deadpool_postgres::Pool;

/// Configuration of the query API, from the environment (or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "query-api",
    about = "Chronicle's query API: profiles and feeds"
)]
pub struct Config {
    /// `CHRONICLE_QUERY_ADDR`: listen address (default `127.0.0.1:8081`).
    #[arg(
        long = "addr",
        env = "CHRONICLE_QUERY_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub addr: SocketAddr,
    /// `CHRONICLE_TOPIC`: the events topic whose positions clients hand in (default
    /// `chronicle.events`).
    #[arg(
        long = "topic",
        env = "CHRONICLE_TOPIC",
        default_value = "chronicle.events"
    )]
    pub topic: String,
    /// `CHRONICLE_CONSISTENCY_WAIT_MS`: longest wait for `min_position` (default 2000).
    #[arg(
        long = "consistency-wait-ms",
        env = "CHRONICLE_CONSISTENCY_WAIT_MS",
        default_value_t = 2000
    )]
    pub consistency_wait_ms: u64,
    /// `CHRONICLE_TOKEN_VERIFY_KEY_FILES`: comma-separated PEM files of the Ed25519 public keys
    /// whose tokens private reads accept: the command API's signing key's (`openssl pkey -in
    /// <private.pem> -pubout`) and those of retired keys whose tokens are still in use
    /// (required). The query API holds no private key, so it cannot make a token.
    #[arg(long = "token-verify-key-files", env = "CHRONICLE_TOKEN_VERIFY_KEY_FILES",
          value_parser = verify_key_files)]
    pub token_verify_keys: VerifyKeys,
    /// `CHRONICLE_STREAM_HEARTBEAT_MS`: how often a live stream sends a comment line when it
    /// has nothing else to send, 100 to 15000 (default 10000).
    #[arg(
        long = "stream-heartbeat-ms",
        env = "CHRONICLE_STREAM_HEARTBEAT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=15_000)
    )]
    pub stream_heartbeat_ms: u64,
    /// `CHRONICLE_STREAM_BUFFER`: messages held for one live stream whose client has not taken
    /// them yet, 4 to 65536 (default 256); a client further behind is cut off and resumes from
    /// its last id.
    #[arg(
        long = "stream-buffer",
        env = "CHRONICLE_STREAM_BUFFER",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(4..=65_536)
    )]
    pub stream_buffer: u32,
    /// `CHRONICLE_LOG_FORMAT`: `text` (default) or `json`.
    #[arg(
        long = "log-format",
        env = "CHRONICLE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
}

/// The public keys of `CHRONICLE_TOKEN_VERIFY_KEY_FILES`, at least one.
#[derive(Debug, Clone)]
pub struct VerifyKeys(Vec<PublicKey>);

fn verify_key_files(paths: &str) -> Result<VerifyKeys, String> {
    let keys = token::public_key_files(paths).map_err(|err| err.to_string())?;
    if keys.is_empty() {
        return Err("name at least one public key file".to_owned());
    }
    Ok(VerifyKeys(keys))
}

#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pool: Pool,
    progress: Progress,
    consistency_wait: Duration,
    /// Checks bearer tokens: signature, lifetime, and a live session.
    tokens: Sessions,
    hub: Arc<stream::Hub>,
    heartbeat: Duration,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A query API that has bound its port.
pub struct Application {
    server: Server,
    router: Router,
    hub: Arc<stream::Hub>,
}

impl Application {
    /// Connects (lazily) to the read models and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        chronicle_infra::telemetry::log_configuration(&config);
        anyhow::ensure!(
            config.limits.request_timeout_ms > config.consistency_wait_ms,
            "CHRONICLE_REQUEST_TIMEOUT_MS ({}) must exceed CHRONICLE_CONSISTENCY_WAIT_MS ({}), \
             so that a read that waits for the projector is answered 503 stale_read",
            config.limits.request_timeout_ms,
            config.consistency_wait_ms
        );
        let metrics = install_metrics()?;
        let pool = config.database.read_only_pool()?;
        chronicle_infra::db::report_pool_usage(&pool, "query");
        let progress = Progress::follow(config.database.pg_config()?, config.topic.clone());
        let hub = Arc::new(stream::Hub::new(config.stream_buffer as usize));
        hub.spawn(config.database.pg_config()?, progress.clone())?;
        let state = AppState(Arc::new(Shared {
            // No HS256 secret: whoever holds it can make tokens, which this service must not.
            tokens: Sessions::new(Verifier::new(&config.token_verify_keys.0, None), &pool),
            pool,
            progress,
            hub,
            heartbeat: Duration::from_millis(config.stream_heartbeat_ms),
            consistency_wait: Duration::from_millis(config.consistency_wait_ms),
        }));
        let hub = Arc::clone(&state.hub);
        let server = Server::bind("query-api", config.addr).await?;
        let router = limit_requests(router(state), &config.limits);
        Ok(Application {
            server,
            router: with_common_layers(router, metrics, Some(openapi::document())),
            hub,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish. Live streams,
    /// which never finish by themselves, end then (their clients resume elsewhere or later).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let hub = self.hub;
        let shutdown = async move {
            shutdown.await;
            hub.close();
        };
        self.server.serve(self.router, shutdown).await
    }
}

fn router(state: AppState) -> Router {
    use handlers::*;
    Router::new()
        .route("/readyz", get(ready))
        .route("/v1/users/by-handle/{handle}", get(profile_by_handle))
        .route("/v1/users/{user_id}", get(profile))
        .route("/v1/users/{user_id}/posts", get(author_feed))
        .route("/v1/users/{user_id}/timeline", get(timeline))
        .route("/v1/users/{user_id}/followers", get(followers))
        .route("/v1/users/{user_id}/following", get(following))
        .route("/v1/feed", get(global_feed))
        .route("/v1/posts/{post_id}", get(post))
        .route("/v1/posts/{post_id}/likes", get(likes))
        .route("/v1/search/posts", get(search::posts))
        .route("/v1/search/users", get(search::users))
        .route("/v1/me/notifications", get(notifications::list))
        .route(
            "/v1/me/notifications/unread-count",
            get(notifications::unread_count),
        )
        .route("/v1/feed/stream", get(stream::feed))
        .route("/v1/users/{user_id}/timeline/stream", get(stream::timeline))
        .route("/v1/me/notifications/stream", get(stream::notifications))
        .with_state(state)
}
