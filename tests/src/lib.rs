//! Chronicle's end-to-end tests are the `e2e` test binary in `tests/e2e/`; this library holds
//! what they share with the benchmarks in `tests/benches/`, and what the benchmarks share.
//!
//! The tests start the real `command-api`, `projector` and `query-api` binaries as child
//! processes against a real Kafka-protocol broker and a real Postgres, and talk to them only
//! through HTTP, Kafka and SQL. This crate must never depend on the service crates.

pub mod bench;
pub mod workload;
