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
//! binary was built in). Service logs land in `target/e2e-logs/<test database>/`. Test databases
//! are named `chronicle_t_<run>_<id>` (`CHRONICLE_TEST_RUN`, set by script/test; see
//! `harness::test_run`). A randomized test prints `CHRONICLE_TEST_SEED=<seed>`: set it to replay
//! the same random choices.

mod broker;
mod harness;
mod load;
mod model;
mod postgres;

mod accounts;
mod auth;
mod browser;
mod cleanup;
mod consistency;
mod crash;
mod dead_letters;
mod duplicates;
mod erasure;
mod failover;
mod faults;
mod fuzz;
mod history;
mod limits;
mod notifications;
mod operate;
mod outcome;
mod pagination;
mod partitions;
mod projection;
mod projector_group;
mod proxies;
mod rebuild;
mod scenario;
mod sealed;
mod search;
mod streams;
mod tls;
mod upgrade;
mod validation;
