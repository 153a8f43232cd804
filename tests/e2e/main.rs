//! Chronicle's end-to-end tests: the real `projector`, `command-api` and `query-api` binaries as
//! child processes against a real Kafka-protocol broker and a real Postgres, one isolated
//! instance (database, topic, consumer group, JWT secret) per test; see `harness`.
//!
//! `script/test` runs them. By hand:
//!
//! ```text
//! cargo build --workspace --bins
//! KAFKA_BROKERS=127.0.0.1:9092 \
//! CHRONICLE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo nextest run -p chronicle-tests
//! ```
//!
//! `CHRONICLE_BIN_DIR` points at the service binaries (default: the profile directory this test
//! binary was built in). Service logs land in `target/e2e-logs/<test database>/`.

mod broker;
mod harness;
mod load;
mod model;
mod postgres;

mod auth;
mod consistency;
mod crash;
mod dead_letters;
mod duplicates;
mod failover;
mod faults;
mod history;
mod limits;
mod operate;
mod pagination;
mod projector_group;
mod rebuild;
mod scenario;
mod tls;
mod validation;
