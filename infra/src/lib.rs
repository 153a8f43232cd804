//! Shared plumbing of Chronicle's three services.
//!
//! Everything here is mechanism, not policy: how to read configuration, talk to Kafka and
//! Postgres, run migrations, encode positions and wait for the projector to reach them, shape
//! HTTP errors as problem documents, serve HTTP with the common middleware, and shut down cleanly.
//! It knows nothing about users, posts or likes; the services own their behaviour and their
//! schemas (`command-api` owns `command`, `projector` owns `projection`).

pub mod apidoc;
pub mod client;
pub mod coalesce;
pub mod db;
pub mod http;
pub mod kafka;
pub mod limit;
pub mod position;
pub mod problem;
pub mod progress;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod token;

pub use position::Position;
pub use problem::Problem;
