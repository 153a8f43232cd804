//! The projector: folds the event log into the read models in Postgres.
//!
//! It is the only writer of the `projection` schema (read models, stored offsets, dead letters)
//! and never produces events. Each partition's events are applied in batches, one transaction
//! per batch together with the partition's next offset, so every event affects the read models
//! exactly once even when the process is killed at any instant. Partitions are worked on
//! concurrently; several projector processes in one consumer group split the partitions.
//!
//! Besides projecting, the process serves `/healthz`, `/readyz` and `/metrics`.

mod batch;
mod consumer;
pub mod generation;
mod inspect;
mod keys;
mod operate;
mod projection;
mod rebuild;
mod verify;

pub use rebuild::rebuild;
pub use verify::{Comparison, compare, verify_generations};

pub use inspect::print_events;
pub use operate::{list_dead_letters, print_status, retry_dead_letter, skip_dead_letter};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chronicle_infra::db::{DatabaseArgs, Migration, migrate};
use chronicle_infra::http::{Server, install_metrics, with_common_layers};
use chronicle_infra::kafka::KafkaArgs;
use chronicle_infra::telemetry::LogFormat;
use deadpool_postgres::Pool;
use rdkafka::consumer::Consumer;

use crate::consumer::{ConsumeSettings, EventConsumer};

/// The schema the projector owns.
pub const SCHEMA: &str = "projection";

/// Migrations of the `projection` schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "read_models",
        sql: include_str!("../migrations/0001_read_models.sql"),
    },
    Migration {
        version: 2,
        name: "applied_events",
        sql: include_str!("../migrations/0002_applied_events.sql"),
    },
    Migration {
        version: 3,
        name: "replies",
        sql: include_str!("../migrations/0003_replies.sql"),
    },
    Migration {
        version: 4,
        name: "dead_letter_resolution",
        sql: include_str!("../migrations/0004_dead_letter_resolution.sql"),
    },
    Migration {
        version: 5,
        name: "generations",
        sql: include_str!("../migrations/0005_generations.sql"),
    },
    Migration {
        version: 6,
        name: "held_dead_letters",
        sql: include_str!("../migrations/0006_held_dead_letters.sql"),
    },
    Migration {
        version: 7,
        name: "handles_not_unique",
        sql: include_str!("../migrations/0007_handles_not_unique.sql"),
    },
    Migration {
        version: 8,
        name: "trigram_search",
        sql: include_str!("../migrations/0008_trigram_search.sql"),
    },
    Migration {
        version: 9,
        name: "counters_fillfactor",
        sql: include_str!("../migrations/0009_counters_fillfactor.sql"),
    },
];

/// The projector's command line: what to do, and the configuration (from the environment).
#[derive(Debug, clap::Parser)]
#[command(
    name = "projector",
    about = "Folds Chronicle's event log into the read models"
)]
pub struct Cli {
    /// What to do; without a command, `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: Config,
}

/// The projector's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Project the event log into the read models until stopped (the default).
    Run,
    /// Print the event log (partition, offset, key, JSON; tab-separated) and exit.
    Events {
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
    },
    /// Print, per partition, the stored offset, the high watermark and the lag, and the number
    /// of dead letters awaiting a decision.
    Status {
        /// One JSON object instead of the table (`topic`, `partitions`, `total_lag`,
        /// `dead_letters.open`, `dead_letters.recorded`, `generations`), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and resolve events that could not be projected.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Build a new generation of every read model from the whole log while the active one keeps
    /// serving, verify it, and switch to it.
    Rebuild {
        /// Switch even if the new generation differs from the active one, built by the same
        /// projection code.
        #[arg(long)]
        accept_diff: bool,
    },
    /// Compare two generations (row counts, checksums, first differing rows). They must be at
    /// the same offsets.
    Verify {
        /// A generation (e.g. `g1`).
        a: String,
        /// Another generation.
        b: String,
    },
    /// List or drop generations of the read models.
    #[command(subcommand)]
    Generations(GenerationCommand),
}

/// `projector generations ...`
#[derive(Debug, clap::Subcommand)]
pub enum GenerationCommand {
    /// List the generations.
    List,
    /// Drop a generation that is not active (its schema, offsets and dead letters).
    Drop {
        /// The generation (e.g. `g1`).
        name: String,
    },
}

/// `projector dead-letters ...`
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// List the dead letters awaiting a decision (with `--all`, every one). A dead letter holds
    /// back the later events of its key: those are listed as `held`.
    List {
        /// Also list the resolved ones.
        #[arg(long)]
        all: bool,
    },
    /// Decode a dead letter again, through the current upcasters, and apply it; then apply the
    /// events of its key held behind it.
    Retry {
        /// The dead letter's id (as `list` shows it).
        id: i64,
    },
    /// Give up on a dead letter (it stays recorded, marked skipped); then apply the events of its
    /// key held behind it.
    Skip {
        /// The dead letter's id (as `list` shows it).
        id: i64,
    },
}

/// Migrates the schema (waiting at most `patience` for another process's migration), then
/// brings the active generation up to this code's layout where that needs no rebuild.
async fn prepare(pool: &Pool, patience: Duration) -> anyhow::Result<()> {
    migrate(pool, SCHEMA, MIGRATIONS, patience).await?;
    generation::upgrade_in_place(pool).await
}

impl Config {
    /// A pool for the operator's subcommands, with the schema migrated.
    pub async fn migrated_pool(&self) -> anyhow::Result<Pool> {
        let pool = self.database.pool()?;
        prepare(&pool, Duration::from_secs(10)).await?;
        Ok(pool)
    }

    /// How a consumer in `group` reads the log and where it projects to.
    pub(crate) fn consume_settings(
        &self,
        group: String,
        target: generation::Target,
    ) -> ConsumeSettings {
        ConsumeSettings {
            group,
            batch_size: self.batch_size as usize,
            fetch_wait_ms: self.fetch_wait_ms,
            group_protocol: self.group_protocol,
            target,
        }
    }
}

/// Configuration of the projector, from the environment (or flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// `CHRONICLE_PROJECTOR_ADDR`: where `/healthz`, `/readyz` and `/metrics` are served
    /// (default `127.0.0.1:8082`).
    #[arg(
        long = "addr",
        env = "CHRONICLE_PROJECTOR_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub addr: SocketAddr,
    /// `CHRONICLE_PROJECTOR_GROUP`: the Kafka consumer group (default `chronicle-projector`).
    #[arg(
        long = "group",
        env = "CHRONICLE_PROJECTOR_GROUP",
        default_value = "chronicle-projector"
    )]
    pub group: String,
    /// `CHRONICLE_PROJECTOR_BATCH`: most events applied in one transaction (default 500).
    #[arg(long = "batch-size", env = "CHRONICLE_PROJECTOR_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// `CHRONICLE_PROJECTOR_FETCH_WAIT_MS`: longest time the broker may hold a fetch that found
    /// no new events (librdkafka's `fetch.wait.max.ms`; default 500). The broker answers as
    /// soon as an event arrives, so this only sets how often an idle projector asks.
    #[arg(long = "fetch-wait-ms", env = "CHRONICLE_PROJECTOR_FETCH_WAIT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=300_000))]
    pub fetch_wait_ms: u32,
    /// `CHRONICLE_KAFKA_GROUP_PROTOCOL`: the consumer group protocol, `classic` (default) or
    /// `consumer` (KIP-848, Kafka 4.0 or newer). With `classic` the projector sets its own
    /// session timeout (6 s) and range assignment; with `consumer` the broker assigns the
    /// partitions, incrementally, and its `group.consumer.session.timeout.ms` (default 45 s)
    /// decides how long a killed projector's partitions wait before they move on.
    #[arg(
        long = "kafka-group-protocol",
        env = "CHRONICLE_KAFKA_GROUP_PROTOCOL",
        value_enum,
        default_value_t
    )]
    pub group_protocol: GroupProtocol,
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
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// How the projector's consumer takes part in its consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    /// The classic protocol: the group's members agree on the assignment among themselves, and
    /// every rebalance takes all partitions away and hands them out again.
    #[default]
    Classic,
    /// The consumer protocol of KIP-848: the broker computes the assignment and moves only the
    /// partitions that change owner.
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// How long requests in flight at shutdown may take to finish.
const HTTP_PATIENCE: Duration = Duration::from_secs(1);

/// A projector that has migrated its schema, joined its group and bound its HTTP port.
pub struct Projector {
    config: Config,
    pool: Pool,
    consumer: Arc<EventConsumer>,
    server: Server,
    router: Router,
}

#[derive(Clone)]
struct Health {
    pool: Pool,
    consumer: Arc<EventConsumer>,
    topic: String,
}

impl Projector {
    /// Migrates, makes sure the topic exists, joins the consumer group and binds the HTTP port.
    pub async fn build(config: Config) -> anyhow::Result<Projector> {
        chronicle_infra::telemetry::log_configuration(&config);
        let metrics = install_metrics()?;
        let pool = config.database.pool()?;
        chronicle_infra::db::report_pool_usage(&pool, "projector");
        prepare(&pool, Duration::from_secs(30)).await?;
        config.kafka.ensure_topic(Duration::from_secs(60)).await?;
        let settings = config.consume_settings(config.group.clone(), generation::Target::Active);
        let consumer = consumer::subscribe(&config.kafka, &settings, pool.clone())?;
        let server = Server::bind("projector", config.addr).await?;
        let health = Health {
            pool: pool.clone(),
            consumer: Arc::clone(&consumer),
            topic: config.kafka.topic.clone(),
        };
        let router = with_common_layers(
            Router::new()
                .route("/readyz", get(ready))
                .with_state(health),
            metrics,
            None,
        );
        Ok(Projector {
            config,
            pool,
            consumer,
            server,
            router,
        })
    }

    /// The address `/healthz` and `/metrics` are served on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// Projects until `shutdown` resolves, then finishes the batches in hand and leaves the group
    /// (within a few seconds, also when the broker or the database are gone).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = tokio::spawn(self.server.serve(self.router, async {
            let _ = http_stopped.await;
        }));
        let settings = self
            .config
            .consume_settings(self.config.group.clone(), generation::Target::Active);
        consumer::consume(
            Arc::clone(&self.consumer),
            self.pool,
            self.config.kafka.topic.clone(),
            settings,
            shutdown,
        )
        .await;
        let _ = stop_http.send(());
        // A `/readyz` in flight may wait for a database that is gone: shutdown does not.
        let mut http = http;
        let served = tokio::time::timeout(HTTP_PATIENCE, &mut http).await;
        if served.is_err() {
            tracing::warn!("dropping HTTP requests still in flight at shutdown");
            http.abort();
        }
        consumer::close(self.consumer).await;
        if let Ok(served) = served {
            served??;
        }
        tracing::info!("projector stopped");
        Ok(())
    }
}

/// Ready when the database answers and the broker knows the topic.
async fn ready(State(health): State<Health>) -> StatusCode {
    let database = match health.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let consumer = Arc::clone(&health.consumer);
    let topic = health.topic.clone();
    let broker = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
