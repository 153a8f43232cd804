//! The test harness: one isolated Chronicle per test, made of real processes.
//!
//! [`TestApp::spawn`] creates a fresh Postgres database, a fresh topic and a fresh consumer group,
//! then starts the real `projector`, `command-api` and `query-api` binaries as child processes
//! pointed at them. Tests talk to the services only through HTTP (and, where a test must, Kafka
//! and SQL). Every child is killed when the `TestApp` is dropped; their output is kept under
//! `target/e2e-logs/<database>/`.
//!
//! Tests never sleep to let the projector catch up: they pass the positions returned by commands
//! as `min_position` and, where they need to block, call [`TestApp::wait_for`].

mod app;
mod client;
mod env;
mod fixture;
mod process;
mod resp;
mod rng;
mod stream;
mod tokens;

pub(crate) use app::*;
pub(crate) use env::*;
pub(crate) use process::*;
pub(crate) use resp::*;
pub(crate) use rng::*;
pub(crate) use stream::*;
pub(crate) use tokens::*;
// What the parts share among themselves only.

use std::time::Duration;

/// Partitions of a test topic unless the test asks for another count.
pub(crate) const DEFAULT_PARTITIONS: u32 = 4;
/// How long a service may take to print its `listening on` line.
pub(super) const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`TestApp::wait_for`] waits for the read models to reach a set of positions.
pub(crate) const WAIT_DEADLINE: Duration = Duration::from_secs(60);
/// At most this many `min_position` parameters go into one request (keeps URLs short).
pub(super) const POSITIONS_PER_REQUEST: usize = 100;
/// The largest page the query API serves.
pub(crate) const MAX_LIMIT: u32 = 100;

/// No positions: the request does not wait for the read models.
pub(crate) const NO_POSITIONS: &[String] = &[];

/// The password test users register with (unless a test gives another).
pub(crate) const PASSWORD: &str = "correct horse battery";
