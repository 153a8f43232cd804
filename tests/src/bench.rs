//! What the benchmarks share: a fresh database and topic, the service binaries as child
//! processes, load on a clock or as fast as answers come, the baselines that need only the
//! broker, what Linux says about each process meanwhile, and the report appended to
//! BENCHMARKS.md.

mod baseline;
mod fixture;
mod load;
mod process;
mod report;

pub use baseline::{
    COMMAND_API_SOURCE, bare_producer, broker_freshness, command_api_producer, send_as_command_api,
};
pub use fixture::{
    Fixture, PARTITIONS, Result, create_topic, env, env_parse, log_path, spawn, topic_end,
    wait_until_projected, with_database,
};
pub use load::{ClosedLoop, Freshness, Latencies, closed_loop, measure_time, open_loop, run_all};
pub use process::{
    CpuShare, CpuUse, JvmMemory, broker_jit_seconds, broker_memory, broker_pid, peak_rss_mib,
    rss_mib,
};
pub use report::{Goal, Measure};
