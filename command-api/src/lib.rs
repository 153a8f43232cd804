//! The command API: HTTP in, validated command, event out to Kafka.
//!
//! It is the only producer of events. A command is answered with 2xx only after the broker has
//! durably acknowledged its event (acks=all); if the broker refused it the answer is 503
//! `broker_unavailable` (nothing changed), and if the event may or may not be in the log, 503
//! `outcome_unknown` with the `Idempotency-Key` that makes a retry safe. An erasure is the
//! exception: once recorded it always completes, so those answers say so, and it needs no key.
//! It owns the `command` schema (handle reservations, credentials, sessions, data keys,
//! erasures: the write-side state) and reads, never writes, the projector's read models to
//! check that the posts and users a command names exist.

mod account;
mod auth;
mod erasure;
mod handlers;
mod idempotency;
mod keys;
mod lookup;
mod openapi;
mod password;
mod pending;
mod problems;
mod purge;
mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, patch, post, put};
use chronicle_infra::db::{DatabaseArgs, Migration, migrate};
use chronicle_infra::http::{Server, install_metrics, with_common_layers};
use chronicle_infra::kafka::{EventProducer, KafkaArgs};
use chronicle_infra::limit::{LimitArgs, RateLimiter, limit_requests};
use chronicle_infra::progress::Progress;
use chronicle_infra::telemetry::LogFormat;
use deadpool_postgres::Pool;
use uuid::Uuid;

pub use auth::{RetiredKeys, Secret};
pub use openapi::document as openapi_document;

/// The schema the command API owns.
pub const SCHEMA: &str = "command";

/// Migrations of the `command` schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "handles",
        sql: include_str!("../migrations/0001_handles.sql"),
    },
    Migration {
        version: 2,
        name: "idempotency_keys",
        sql: include_str!("../migrations/0002_idempotency_keys.sql"),
    },
    Migration {
        version: 3,
        name: "idempotency_key_expiry",
        sql: include_str!("../migrations/0003_idempotency_key_expiry.sql"),
    },
    Migration {
        version: 4,
        name: "accounts",
        sql: include_str!("../migrations/0004_accounts.sql"),
    },
    Migration {
        version: 5,
        name: "data_keys",
        sql: include_str!("../migrations/0005_data_keys.sql"),
    },
    Migration {
        version: 6,
        name: "erasures",
        sql: include_str!("../migrations/0006_erasures.sql"),
    },
    Migration {
        version: 7,
        name: "pending_registrations",
        sql: include_str!("../migrations/0007_pending_registrations.sql"),
    },
];

/// Configuration of the command API, from the environment (or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "command-api",
    about = "Chronicle's command API: HTTP commands become events"
)]
pub struct Config {
    /// `CHRONICLE_COMMAND_ADDR`: listen address (default `127.0.0.1:8080`).
    #[arg(
        long = "addr",
        env = "CHRONICLE_COMMAND_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// `CHRONICLE_TOKEN_SIGNING_KEY_FILE`: the Ed25519 private key tokens are signed with, a
    /// PKCS#8 PEM file as `openssl genpkey -algorithm ed25519` writes it (required).
    #[arg(long = "token-signing-key-file", env = "CHRONICLE_TOKEN_SIGNING_KEY_FILE",
          value_parser = auth::signing_key_file)]
    pub token_signing_key: chronicle_infra::token::SigningKey,
    /// `CHRONICLE_TOKEN_PUBLIC_KEY_FILES`: comma-separated PEM files of the public keys of retired
    /// signing keys, whose tokens are still accepted until they expire (default none).
    #[arg(long = "token-public-key-files", env = "CHRONICLE_TOKEN_PUBLIC_KEY_FILES",
          default_value = "", value_parser = auth::public_key_files)]
    pub token_public_keys: auth::RetiredKeys,
    /// `CHRONICLE_JWT_SECRET`: only while upgrading from HS256 tokens: the old secret, so that
    /// tokens issued with it keep working until they expire (default unset: they are refused).
    #[arg(
        long = "jwt-secret",
        env = "CHRONICLE_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<Secret>,
    /// `CHRONICLE_PENDING_RETRY_SECS`: how long an erasure or a registration whose event the
    /// broker did not confirm stays pending before the background finisher appends it again
    /// (default 60; at least a second more than the request timeout, so that it never races the
    /// request that began it).
    #[arg(
        long = "pending-retry-secs",
        env = "CHRONICLE_PENDING_RETRY_SECS",
        default_value_t = 60
    )]
    pub pending_retry_secs: u64,
    /// `CHRONICLE_TOKEN_TTL_SECS`: lifetime of issued tokens (default 7 days).
    #[arg(long = "token-ttl-secs", env = "CHRONICLE_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub token_ttl_secs: u64,
    /// `CHRONICLE_CONSISTENCY_WAIT_MS`: longest wait for `min_position` (default 2000).
    #[arg(
        long = "consistency-wait-ms",
        env = "CHRONICLE_CONSISTENCY_WAIT_MS",
        default_value_t = 2000
    )]
    pub consistency_wait_ms: u64,
    /// `CHRONICLE_PRODUCE_TIMEOUT_MS`: longest wait for the broker's acknowledgement before
    /// answering 503 `outcome_unknown` (default 5000).
    #[arg(long = "produce-timeout-ms", env = "CHRONICLE_PRODUCE_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub produce_timeout_ms: u64,
    /// `CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS`: how long an `Idempotency-Key` is remembered
    /// (default 24; fractions allowed, e.g. `0.5`). An older key is a new key; expired keys are
    /// deleted in the background.
    #[arg(long = "idempotency-key-ttl-hours", env = "CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS",
          default_value_t = 24.0, value_parser = parse_ttl_hours)]
    pub idempotency_key_ttl_hours: f64,
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
    pub password_hash: password::HashArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    /// `CHRONICLE_RATE_LIMIT_PER_USER`: commands per second one user may send on average, with
    /// bursts as `CHRONICLE_RATE_LIMIT_BURST_SECS` says (default 20; 0 turns the limit off).
    #[arg(
        long = "rate-limit-per-user",
        env = "CHRONICLE_RATE_LIMIT_PER_USER",
        default_value_t = 20
    )]
    pub rate_limit_per_user: u32,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    producer: EventProducer,
    pool: Pool,
    /// The existence checks of commands, coalesced.
    lookups: lookup::Lookups,
    progress: Progress,
    tokens: auth::Tokens,
    /// Password hashing, off the async threads.
    hasher: password::Hasher,
    /// The users' data keys, sealing their events' personal fields.
    keys: keys::DataKeys,
    /// Failed password checks per handle (logins) and per user (password changes).
    failures: password::Failures,
    /// Commands per user (`None`: unlimited).
    per_user: Option<RateLimiter<Uuid>>,
    consistency_wait: Duration,
    /// How long an `Idempotency-Key` is remembered.
    idempotency_ttl: Duration,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A command API that has migrated, found its topic and bound its port.
pub struct Application {
    server: Server,
    router: Router,
    producer: EventProducer,
}

impl Application {
    /// Migrates the `command` schema, makes sure the topic exists and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        chronicle_infra::telemetry::log_configuration(&config);
        let waits = config.produce_timeout_ms + config.consistency_wait_ms;
        anyhow::ensure!(
            config.limits.request_timeout_ms > waits,
            "CHRONICLE_REQUEST_TIMEOUT_MS ({}) must exceed CHRONICLE_PRODUCE_TIMEOUT_MS plus \
             CHRONICLE_CONSISTENCY_WAIT_MS ({waits}), so that a slow broker is answered as such",
            config.limits.request_timeout_ms
        );
        let metrics = install_metrics()?;
        let pool = config.database.pool()?;
        chronicle_infra::db::report_pool_usage(&pool, "command");
        migrate(&pool, SCHEMA, MIGRATIONS, Duration::from_secs(30)).await?;
        config.kafka.ensure_topic(Duration::from_secs(60)).await?;
        let producer = EventProducer::new(
            &config.kafka,
            "/chronicle/command-api",
            Duration::from_millis(config.produce_timeout_ms),
        )?;
        let idempotency_ttl = Duration::from_secs_f64(config.idempotency_key_ttl_hours * 3600.0);
        tokio::spawn(idempotency::cleanup(
            pool.clone(),
            idempotency_ttl,
            cleanup_period(idempotency_ttl),
        ));
        let token_ttl = Duration::from_secs(config.token_ttl_secs);
        tokio::spawn(account::cleanup(
            pool.clone(),
            token_ttl,
            cleanup_period(token_ttl),
        ));
        let progress = Progress::follow(config.database.pg_config()?, config.kafka.topic.clone());
        let state = AppState(Arc::new(Shared {
            producer: producer.clone(),
            lookups: lookup::Lookups::start(&pool),
            progress,
            tokens: auth::Tokens::new(
                &config.token_signing_key,
                &config.token_public_keys,
                config.jwt_secret.as_ref(),
                token_ttl,
                &pool,
            ),
            hasher: password::Hasher::start(&config.password_hash).await?,
            failures: password::Failures::default(),
            keys: keys::DataKeys::new(pool.clone()),
            per_user: config.limits.limiter(config.rate_limit_per_user),
            consistency_wait: Duration::from_millis(config.consistency_wait_ms),
            idempotency_ttl,
            pool,
        }));
        // Never while the request that began the command may still be appending it.
        let pending_retry = Duration::from_secs(config.pending_retry_secs)
            .max(config.limits.request_timeout() + Duration::from_secs(1));
        tokio::spawn(pending::finish(
            state.clone(),
            pending_retry,
            pending_retry.min(PENDING_FINISH_PERIOD),
        ));
        let server = Server::bind("command-api", config.addr).await?;
        // Outside the request timeout, so that handlers know when it will end them.
        let timeout = config.limits.request_timeout();
        let router =
            limit_requests(router(state), &config.limits).layer(axum::middleware::from_fn(
                move |request, next| idempotency::stamp_deadline(timeout, request, next),
            ));
        Ok(Application {
            server,
            router: with_common_layers(router, metrics, Some(openapi::document())),
            producer,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// Serves until `shutdown` resolves, lets in-flight commands finish, then flushes the
    /// producer so that nothing queued is lost.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let served = self.server.serve(self.router, shutdown).await;
        self.producer.flush(Duration::from_secs(10)).await;
        served
    }
}

/// Parses `CHRONICLE_IDEMPOTENCY_KEY_TTL_HOURS`: a positive number of hours, at most ten years.
fn parse_ttl_hours(value: &str) -> Result<f64, String> {
    let hours: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of hours"))?;
    if hours.is_finite() && hours > 0.0 && hours <= 24.0 * 3653.0 {
        Ok(hours)
    } else {
        Err(format!(
            "`{value}` is not between 0 (excluded) and 87672 hours"
        ))
    }
}

/// How often erasures and registrations left pending are looked for, at most.
const PENDING_FINISH_PERIOD: Duration = Duration::from_secs(30);

/// How often expired rows (idempotency keys, sessions) are looked for: a quarter of their
/// lifetime, between one second and ten minutes.
fn cleanup_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/readyz", axum::routing::get(handlers::ready))
        .route("/v1/users", post(handlers::register))
        .route(
            "/v1/users/me",
            patch(handlers::update_profile).delete(account::erase),
        )
        .route("/v1/users/me/password", put(account::change_password))
        .route("/v1/sessions", post(account::login))
        .route("/v1/sessions/current", delete(account::logout))
        .route("/v1/posts", post(handlers::publish))
        .route("/v1/posts/{post_id}", delete(handlers::delete_post))
        .route(
            "/v1/posts/{post_id}/like",
            put(handlers::like).delete(handlers::unlike),
        )
        .route(
            "/v1/users/me/following/{user_id}",
            put(handlers::follow).delete(handlers::unfollow),
        )
        .route(
            "/v1/me/notifications/read",
            post(handlers::read_notifications),
        )
        .with_state(state)
}
