//! Chronicle's end-to-end tests are the `e2e` test binary in `tests/e2e/`; this library holds
//! what they share with the benchmarks in `tests/benches/`, and what the benchmarks share.
//!
//! The tests start the real `command-api`, `projector` and `query-api` binaries as child
//! processes against a real Kafka-protocol broker and a real Postgres, and talk to them only
//! through HTTP, Kafka and SQL. This crate must never depend on the service crates.

pub mod bench;
pub mod workload;

/// A TCP port on 127.0.0.1 that nothing listens on right now, for a server a test or benchmark
/// starts (the OS picks it; it stays free unless something else takes it meanwhile).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
