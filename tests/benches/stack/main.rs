//! The stack benchmark: Chronicle's jobs, each next to the best this machine does with the same
//! broker and database, measured in one run:
//!
//! - command ingest at saturation (2xx commands/s of the full command mix over HTTP), next to
//!   the bare HTTP baseline (`bare_http`: the same requests, each produced as the same event
//!   with the same producer settings, nothing else), the two taking turns, and a bare rdkafka
//!   producer;
//! - command latency at half Chronicle's saturation rate, on a clock, next to the bare HTTP
//!   baseline at the same rate;
//! - freshness at 1,000 commands/s (or half the saturation rate, where that is lower): from a
//!   command's 202 to its post being readable, next to the broker alone (a bare producer to a
//!   bare consumer with the projector's fetch settings);
//! - reads at saturation (profile and home timeline), next to pgbench running the same SQL, and
//!   their latency at half that rate, next to pgbench's at the same rate;
//! - peak memory (VmHWM) of each service, and the broker's heap and RSS.
//!
//! Load at a set rate is scheduled on a clock, and each latency is measured from the moment its
//! request was due, not from when it was sent: a stall counts against every request it delays
//! (no coordinated omission). Before each measure the projector has applied everything in the
//! log. The CPU each part of the machine used during each measure is in the notes: on two
//! shared cores it says which part bounds a goal that is missed. Run it with
//! `script/bench stack`; `CHRONICLE_BENCH_USERS` sets the population (default 2,000),
//! `CHRONICLE_BENCH_SECONDS` each measure's length (default 10), `CHRONICLE_BENCH_FRESHNESS_RATE`
//! the freshness measure's rate (default 1,000/s).

mod bare_http;
mod commands;
mod freshness;
mod pgbench;
mod reads;
mod services;
mod streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_tests::bench::{
    ClosedLoop, CpuShare, CpuUse, Fixture, Goal, Measure, Result, bare_producer, broker_freshness,
    broker_jit_seconds, broker_memory, create_topic, env_parse, measure_time, peak_rss_mib,
};

use crate::bare_http::BareHttp;
use crate::commands::{MIX, Mix};
use crate::pgbench::Pgbench;
use crate::services::{FOLLOWS_PER_USER, Stack, User};

/// Closed-loop clients of the ingest measures (HTTP and bare producer alike).
const SATURATION_CLIENTS: usize = 64;
/// Clients of the read measures, for the query API and pgbench alike (the database allows 100
/// connections, and the services hold some).
const READ_CLIENTS: usize = 32;
/// The goal's rate of the freshness measure (`CHRONICLE_BENCH_FRESHNESS_RATE` changes it, to
/// see freshness on an idle stack), where the command API takes it.
const FRESHNESS_RATE: u64 = 1_000;
/// Turns of each side in the ingest measure, taken A B B A ... (an even number: each side goes
/// first equally often).
const INGEST_TURNS: usize = 4;
/// Live stream subscribers during the streams measure (`CHRONICLE_BENCH_STREAMS` changes it).
const STREAM_SUBSCRIBERS: usize = 1_000;
/// One round of the warm-up: how long each ingest path runs at saturation, unmeasured.
const WARM_UP_ROUND: Duration = Duration::from_secs(3);
/// The warm-up ends once the broker's JIT compiler used less than this share of a core over a
/// round...
const JIT_QUIET: f64 = 0.05;
/// ...or after this long.
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|arg| arg == bare_http::FLAG) {
        return bare_http::serve().await;
    }
    run().await
}

/// What the warm-up did: how long it ran, and the share of a core the broker's JIT compiler used
/// in its last round (`None` without a broker PID).
struct WarmUp {
    took: Duration,
    jit_last_round: Option<f64>,
}

/// Runs each of `bases` at saturation, round after round, unmeasured, until the broker's JIT
/// compiler is quiet ([`JIT_QUIET`]) or [`WARM_UP_LIMIT`] has passed. The broker is a JVM started
/// for this benchmark; it compiles its produce and fetch paths under the first sustained load
/// (its C2 compiler took 0.3 of a core during the first measure of a run without a warm-up),
/// which would be charged to whichever measure came first.
async fn warm_up(http: &reqwest::Client, bases: [&String; 2], mix: &Mix) -> WarmUp {
    let started = Instant::now();
    loop {
        let (jit_before, round_started) = (broker_jit_seconds(), Instant::now());
        for base in bases {
            commands::saturate(http, base, mix, SATURATION_CLIENTS, WARM_UP_ROUND).await;
        }
        let jit_last_round = broker_jit_seconds()
            .zip(jit_before)
            .map(|(after, before)| (after - before) / round_started.elapsed().as_secs_f64());
        if jit_last_round.is_none_or(|share| share < JIT_QUIET)
            || started.elapsed() >= WARM_UP_LIMIT
        {
            return WarmUp {
                took: started.elapsed(),
                jit_last_round,
            };
        }
    }
}

/// Turns in one measure and the CPU meanwhile, as one.
fn combine(turns: Vec<(ClosedLoop, CpuShare, Duration)>) -> (ClosedLoop, CpuShare) {
    let cpu: Vec<(CpuShare, Duration)> = turns
        .iter()
        .map(|(_, cpu, took)| (cpu.clone(), *took))
        .collect();
    let measured = turns
        .into_iter()
        .map(|(measured, _, took)| (measured, took))
        .collect();
    (ClosedLoop::combined(measured), CpuShare::combined(&cpu))
}

/// Says which measure begins (for people watching, and for profilers to find its window).
fn measuring(what: &str) {
    println!("measuring: {what}");
}

async fn run() -> Result<()> {
    let duration = measure_time()?;
    let seconds = duration.as_secs_f64();
    let users_count: usize = env_parse("CHRONICLE_BENCH_USERS", 2000)?;
    // The projector's `fetch.wait.max.ms`: handed to it, and used by the broker-alone floor.
    // Unset, the projector's own default.
    let fetch_wait_ms: u32 = env_parse("CHRONICLE_PROJECTOR_FETCH_WAIT_MS", 500)?;
    let fixture = Fixture::create("stack").await?;
    let mut stack = Stack::start(&fixture, fetch_wait_ms).await?;
    let db = fixture.connect().await?;

    // A population: users, a follow graph, a post each.
    let started = Instant::now();
    let users: Arc<[User]> = stack.seed(&db, users_count).await?.into();
    wait_until_seeded(&db, users_count).await?;
    println!(
        "seeded {users_count} users, {} follows, {users_count} posts in {:.1} s",
        users_count * FOLLOWS_PER_USER,
        started.elapsed().as_secs_f64()
    );
    let mix = Mix::new(Arc::clone(&users));
    let http = stack.http.clone();

    // 1. Ingest at saturation: Chronicle and the bare HTTP baseline in turns, then the bare
    //    producer, all to the topic the projector consumes.
    let bare = BareHttp::start(&fixture, &http).await?;
    let also = [("bare HTTP baseline", bare.pid())];
    // Warm-up, not measured: both ingest paths at saturation until the broker's JIT is quiet.
    // This also connects the bare baseline's producer.
    let warmed = warm_up(&http, [&stack.command, &bare.base], &mix).await;
    // Chronicle and the bare baseline take turns (A B B A ...), so that a machine whose speed
    // drifts during the run favours neither; each turn starts with everything projected.
    let mut turns: [Vec<(ClosedLoop, CpuShare, Duration)>; 2] = [Vec::new(), Vec::new()];
    let turn = duration / INGEST_TURNS as u32;
    for round in 0..INGEST_TURNS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (name, base) = [("Chronicle", &stack.command), ("bare HTTP", &bare.base)][side];
            fixture.settle(&db).await?;
            measuring(&format!("ingest, {name}, turn {}", round + 1));
            let (before, started) = (stack.cpu(&also), Instant::now());
            let measured = commands::saturate(&http, base, &mix, SATURATION_CLIENTS, turn).await;
            let took = started.elapsed();
            turns[side].push((measured, stack.cpu(&also).since(&before), took));
        }
    }
    let [chronicle_turns, bare_turns] = turns;
    let (ingest, ingest_cpu) = combine(chronicle_turns);
    let (bare_ingest, bare_ingest_cpu) = combine(bare_turns);
    fixture.settle(&db).await?;
    let before = stack.cpu(&also);
    measuring("ingest, bare producer");
    let producer = bare_producer(
        &fixture.brokers,
        &fixture.topic,
        SATURATION_CLIENTS,
        duration,
    )
    .await?;
    let producer_cpu = stack.cpu(&also).since(&before);
    println!(
        "ingest: {:.0} commands/s; bare HTTP {:.0}/s; bare producer {producer:.0}/s",
        ingest.rate, bare_ingest.rate
    );

    // 2. Command latency at half Chronicle's saturation rate, Chronicle's and the baseline's.
    let half = (ingest.rate / 2.0).max(1.0);
    fixture.settle(&db).await?;
    let before = stack.cpu(&also);
    measuring("command latency, Chronicle");
    let (latency, latency_failed) =
        commands::at_rate(&http, &stack.command, &mix, half, duration).await;
    let latency_cpu = stack.cpu(&also).since(&before);
    fixture.settle(&db).await?;
    let before = stack.cpu(&also);
    measuring("command latency, bare HTTP");
    let (bare_latency, bare_latency_failed) =
        commands::at_rate(&http, &bare.base, &mix, half, duration).await;
    let bare_latency_cpu = stack.cpu(&also).since(&before);
    let bare_peak = peak_rss_mib(bare.pid());
    drop(bare);
    println!(
        "commands at {half:.0}/s: {}; bare HTTP {}",
        latency.summary(),
        bare_latency.summary()
    );

    // 3. Freshness at 1,000 commands/s, or at half the saturation rate where the command API
    //    cannot take 1,000 (a backlog of unanswered commands would measure the queue, not
    //    freshness). Its floor, the broker alone, is measured at the end, once the services
    //    are stopped.
    let asked: u64 = env_parse("CHRONICLE_BENCH_FRESHNESS_RATE", FRESHNESS_RATE)?;
    let rate = asked.min((ingest.rate / 2.0) as u64).max(1);
    fixture.settle(&db).await?;
    let before = stack.cpu(&[]);
    measuring("freshness, Chronicle");
    let freshness = freshness::measure(&stack, &users, rate, duration, None).await?;
    let freshness_cpu = stack.cpu(&[]).since(&before);
    println!(
        "freshness at {rate}/s: from due {}; from the 202 {}",
        freshness.from_due.summary(),
        freshness.from_ack.summary()
    );

    // 3b. Live streams: subscribers connected while posts flow at 1,000/s; each
    //     post's delivery to the streams next to its freshness, on the same posts.
    let subscribers: usize = env_parse("CHRONICLE_BENCH_STREAMS", STREAM_SUBSCRIBERS)?;
    // The goal's 1,000/s, taken as asked even where that is more than half the saturation
    // rate (unlike the freshness measure's).
    let stream_rate: u64 = env_parse("CHRONICLE_BENCH_STREAMS_RATE", FRESHNESS_RATE)?;
    let query_pid = stack
        .pids()
        .into_iter()
        .find(|(name, _)| *name == "query-api")
        .map(|(_, pid)| pid)
        .ok_or("the query API is not running")?;
    fixture.settle(&db).await?;
    let before = stack.cpu(&[]);
    measuring(&format!("live streams, {subscribers} subscribers"));
    let streamed = streams::measure(
        &stack,
        query_pid,
        &users,
        &mix,
        subscribers,
        stream_rate,
        duration,
    )
    .await?;
    let streams_cpu = stack.cpu(&[]).since(&before);
    println!(
        "streams at {stream_rate} commands/s with {subscribers} subscribers: delivery {}; freshness (202 -> \
         readable) {}; query API {:.1} MiB",
        streamed.delivery.summary(),
        streamed.freshness.from_ack.summary(),
        streamed.query_rss.unwrap_or(f64::NAN)
    );

    // 4. Reads at saturation, next to pgbench; latency at half the rate, next to pgbench's at
    //    the same rate.
    fixture.settle(&db).await?;
    measuring("reads at saturation");
    let reads = reads::saturation(&http, &stack.query, &users, READ_CLIENTS, duration).await;
    let pgbench =
        Pgbench::prepare(&fixture.database_url, &db, &users, READ_CLIENTS, duration).await?;
    let pgbench_reads = pgbench.saturation()?;
    let half_reads = (reads / 2.0).max(1.0);
    let before = stack.cpu(&[]);
    let read_latency = reads::at_rate(&http, &stack.query, &users, half_reads, duration).await;
    let read_cpu = stack.cpu(&[]).since(&before);
    let before = stack.cpu(&[]);
    let pgbench_latency = pgbench.at(half_reads)?;
    let pgbench_cpu = stack.cpu(&[]).since(&before);
    drop(pgbench);
    println!(
        "reads: {reads:.0}/s (pgbench {pgbench_reads:.0}/s); at {half_reads:.0}/s {} (pgbench {})",
        read_latency.summary(),
        pgbench_latency.summary()
    );

    // Post searches at saturation, next to pgbench running the same statement.
    fixture.settle(&db).await?;
    measuring("post searches at saturation");
    let before = stack.cpu(&[]);
    let searches =
        reads::search_saturation(&http, &stack.query, users.len(), READ_CLIENTS, duration).await;
    let search_cpu = stack.cpu(&[]).since(&before);
    let pgbench = Pgbench::search(
        &fixture.database_url,
        &db,
        users.len(),
        READ_CLIENTS,
        duration,
    )
    .await?;
    let pgbench_searches = pgbench.saturation()?;
    drop(pgbench);
    println!(
        "post searches: {:.0}/s ({} failed); pgbench {pgbench_searches:.0}/s",
        searches.rate, searches.failed
    );

    // The unread count, a private read, next to the profile, the cheapest public one.
    fixture.settle(&db).await?;
    measuring("unread counts and profiles at saturation, in turns");
    let before = stack.cpu(&[]);
    let (unread, profiles) =
        reads::unread_against_profiles(&http, &stack.query, &users, READ_CLIENTS, duration).await;
    let unread_cpu = stack.cpu(&[]).since(&before);
    println!(
        "unread counts: {:.0}/s ({} failed), profiles {:.0}/s ({} failed)",
        unread.rate, unread.failed, profiles.rate, profiles.failed
    );

    // 5. Peak memory of each service and the broker's heap, then the services stop.
    let peaks: Vec<(&str, Option<f64>)> = stack
        .pids()
        .into_iter()
        .map(|(name, pid)| (name, peak_rss_mib(pid)))
        .collect();
    let broker = broker_memory().unwrap_or_default();
    stack.stop();

    // The broker alone at the freshness rate: each send, from when it was due and from its
    // acknowledgement, to a consumer with the projector's fetch settings, nothing else running.
    let floor_topic = format!("{}.freshness", fixture.topic);
    create_topic(&fixture.brokers, &floor_topic).await?;
    let before = CpuUse::now(&[]);
    let floor = broker_freshness(
        &fixture.brokers,
        &floor_topic,
        rate as f64,
        duration,
        fetch_wait_ms,
    )
    .await?;
    let floor_cpu = CpuUse::now(&[]).since(&before);
    println!(
        "the broker alone at {rate}/s: from due {}; from the ack {}",
        floor.from_due.summary(),
        floor.from_ack.summary()
    );

    let mut measures = vec![
        Measure::new(
            "command ingest at saturation, 2xx commands/s (baseline: bare HTTP)",
            ingest.rate,
            "commands/s",
        )
        .against(bare_ingest.rate)
        .goal(Goal::AtLeastTimes(0.8))
        .bounded(&ingest_cpu),
        Measure::new(
            "bare HTTP at saturation (baseline: bare rdkafka producer)",
            bare_ingest.rate,
            "commands/s",
        )
        .against(producer),
        Measure::new(
            format!("command latency at {half:.0}/s, p99 (baseline: bare HTTP, same rate)"),
            latency.p(0.99),
            "ms",
        )
        .against(bare_latency.p(0.99))
        .goal(Goal::AtMostTimes(2.0))
        .bounded(&latency_cpu),
        Measure::new(
            format!("command latency at {half:.0}/s, p50 (baseline: bare HTTP, same rate)"),
            latency.p(0.5),
            "ms",
        )
        .against(bare_latency.p(0.5)),
        Measure::new(
            format!(
                "freshness at {rate}/s, p50: due -> readable (baseline: bare producer -> \
                 consumer, due -> received)"
            ),
            freshness.from_due.p(0.5),
            "ms",
        )
        .against(floor.from_due.p(0.5))
        .goal(Goal::AtMostTimes(1.5))
        .bounded(&freshness_cpu),
        Measure::new(
            format!(
                "freshness at {rate}/s, p99: due -> readable (baseline: bare producer -> \
                 consumer, due -> received)"
            ),
            freshness.from_due.p(0.99),
            "ms",
        )
        .against(floor.from_due.p(0.99))
        .goal(Goal::AtMostTimes(1.5))
        .bounded(&freshness_cpu),
        Measure::new(
            format!("freshness at {rate}/s, p50: 202 -> readable"),
            freshness.from_ack.p(0.5),
            "ms",
        ),
        Measure::new(
            format!("freshness at {rate}/s, p99: 202 -> readable"),
            freshness.from_ack.p(0.99),
            "ms",
        ),
        Measure::new(
            "reads at saturation, profile + home timeline (baseline: pgbench, same SQL)",
            reads,
            "reads/s",
        )
        .against(pgbench_reads)
        .goal(Goal::AtLeastTimes(0.6)),
        Measure::new(
            format!("read latency at {half_reads:.0}/s, p99 (baseline: pgbench, same rate)"),
            read_latency.p(0.99),
            "ms",
        )
        .against(pgbench_latency.p(0.99))
        .goal(Goal::AtMost(5.0))
        .bounded(&read_cpu),
        Measure::new(
            format!(
                "stream delivery at {stream_rate} commands/s, {subscribers} streams, p50: 202 -> received \
                 (baseline: 202 -> readable with min_position, same posts)"
            ),
            streamed.delivery.p(0.5),
            "ms",
        )
        .against(streamed.freshness.from_ack.p(0.5))
        .goal(Goal::AtMostTimes(1.5))
        .bounded(&streams_cpu),
        Measure::new(
            format!(
                "stream delivery at {stream_rate} commands/s, {subscribers} streams, p99: 202 -> received \
                 (baseline: 202 -> readable with min_position, same posts)"
            ),
            streamed.delivery.p(0.99),
            "ms",
        )
        .against(streamed.freshness.from_ack.p(0.99))
        .goal(Goal::AtMostTimes(1.5))
        .bounded(&streams_cpu),
        Measure::new(
            format!("query-api RSS with {subscribers} streams open"),
            streamed.query_rss.unwrap_or(f64::NAN),
            "MiB",
        )
        .goal(Goal::AtMost(128.0))
        .bounded_by("the query-api process's resident memory (VmRSS) at the end of the measure"),
        Measure::new(
            "post searches at saturation (baseline: pgbench, same SQL)",
            searches.rate,
            "reads/s",
        )
        .against(pgbench_searches)
        .goal(Goal::AtLeastTimes(0.6))
        .bounded(&search_cpu),
        Measure::new(
            "unread-count reads at saturation (baseline: profile reads, in turns)",
            unread.rate,
            "reads/s",
        )
        .against(profiles.rate)
        .goal(Goal::AtLeastTimes(0.9))
        .bounded(&unread_cpu),
    ];
    for (name, peak) in peaks {
        measures.push(
            Measure::new(
                format!("peak RSS under load: {name}"),
                peak.unwrap_or(f64::NAN),
                "MiB",
            )
            .goal(Goal::AtMost(64.0))
            .bounded_by(format!("the {name} process's own memory (VmHWM)")),
        );
    }
    for (name, value) in [
        ("broker (JVM): heap, -Xmx", broker.max_heap),
        ("broker (JVM): heap in use after the load", broker.heap_used),
        ("broker (JVM): peak RSS", broker.peak_rss),
    ] {
        measures.push(Measure::new(name, value.unwrap_or(f64::NAN), "MiB"));
    }

    let producer_ratio = ingest.rate / producer;
    let turn_secs = seconds / INGEST_TURNS as f64;
    let warm_up = format!(
        "{:.0} s of both at saturation, unmeasured, until the broker's JIT compiler used {} of a \
         core (the goal: under {JIT_QUIET})",
        warmed.took.as_secs_f64(),
        warmed
            .jit_last_round
            .map_or_else(|| "?".to_owned(), |share| format!("{share:.2}"))
    );
    let notes = vec![
        format!(
            "population: {users_count} users, {} follows, a post each; each measure {seconds:.0} s",
            users_count * FOLLOWS_PER_USER
        ),
        format!(
            "ingest: {SATURATION_CLIENTS} closed-loop clients for {seconds:.0} s each ({MIX}), in \
             {INGEST_TURNS} turns of {turn_secs:.1} s each, Chronicle and the bare baseline \
             alternating (A B B A), each turn after the projector caught up; \
             after {warm_up}. \
             Chronicle: {:.0} commands/s answered 2xx, {} not; latency {}; CPU meanwhile: \
             {ingest_cpu}. Bare HTTP (the same requests to a minimal axum handler that produces \
             the same event with the command API's producer settings; no token check, \
             validation or database): {:.0}/s, {} not 2xx; latency {}; CPU meanwhile: \
             {bare_ingest_cpu}. Bare rdkafka producer ({SATURATION_CLIENTS} sends in flight of \
             likes written as the command API writes them, acks=all, idempotent, linger.ms=2): \
             {producer:.0}/s; CPU meanwhile: {producer_cpu}. Chronicle / bare producer: \
             {producer_ratio:.2}",
            ingest.rate,
            ingest.failed,
            ingest.latencies.summary(),
            bare_ingest.rate,
            bare_ingest.failed,
            bare_ingest.latencies.summary(),
        ),
        format!(
            "command latency: the mix at {half:.0}/s (half Chronicle's saturation) for \
             {seconds:.0} s, each from when it was due. Chronicle: {}, {latency_failed} not 2xx; \
             CPU meanwhile: {latency_cpu}. Bare HTTP: {}, {bare_latency_failed} not 2xx; CPU \
             meanwhile: {bare_latency_cpu}",
            latency.summary(),
            bare_latency.summary(),
        ),
        format!(
            "freshness: {rate} publishes/s (the goal's rate is {FRESHNESS_RATE}/s) for \
             {seconds:.0} s, each read back with its position; projector fetch.wait.max.ms=\
             {fetch_wait_ms}. Chronicle, from when each command was due: {}; from its 202: {}; \
             CPU meanwhile: {freshness_cpu}. The broker alone at the same rate, services \
             stopped (a producer with the command API's settings to a bare consumer with the \
             projector's fetch.wait.max.ms), from when each send was due: {}; from its \
             acknowledgement: {} ({:.0}% received before the acknowledgement: Kafka answers \
             the produce request and the waiting fetch when the record commits, so measured \
             from the acknowledgement the broker's floor is about 0, and the ratio is taken \
             from when each write was due); CPU meanwhile: {floor_cpu}",
            freshness.from_due.summary(),
            freshness.from_ack.summary(),
            floor.from_due.summary(),
            floor.from_ack.summary(),
            floor.before_ack() * 100.0,
        ),
        format!(
            "reads: {READ_CLIENTS} clients, half profiles, half home timelines; pgbench runs the \
             same statements, one read per transaction, {READ_CLIENTS} clients, prepared. At \
             {half_reads:.0} reads/s: query API {}, CPU meanwhile: {read_cpu}; pgbench (Poisson \
             arrivals) {}, CPU meanwhile: {pgbench_cpu}",
            read_latency.summary(),
            pgbench_latency.summary()
        ),
        format!(
            "streams: {subscribers} subscribers ({} of the global feed, {} of random users' home \
             timelines, {} of random users' notifications), connected before the mix ({MIX}) \
             flowed at {stream_rate} commands/s for {seconds:.0} s, each post read back with its \
             position; {} post and {} notification messages received, {} streams ended early. \
             Delivery (202 -> message, per stream that carries the post): {}; freshness of the \
             same posts (202 -> readable): {}; from when each was due: {}; CPU meanwhile: \
             {streams_cpu}; the query API's metrics: {}",
            streamed.streams[0],
            streamed.streams[1],
            streamed.streams[2],
            streamed.messages,
            streamed.notifications,
            streamed.ended,
            streamed.delivery.summary(),
            streamed.freshness.from_ack.summary(),
            streamed.freshness.from_due.summary(),
            streamed.rounds,
        ),
        format!(
            "post searches: {READ_CLIENTS} closed-loop clients, each `GET /v1/search/posts?q=user \
             <n>` (the seeded post of a random user n: the query API's ranked full-text \
             statement); pgbench runs that statement, {READ_CLIENTS} clients, prepared. Query \
             API {:.0}/s, {} failed, latency {}; CPU meanwhile: {search_cpu}",
            searches.rate,
            searches.failed,
            searches.latencies.summary(),
        ),
        format!(
            "unread counts: {READ_CLIENTS} closed-loop clients, each read with a random user's \
             token (`GET /v1/me/notifications/unread-count`), against profile reads of \
             random users, in 4 turns of {:.1} s alternating (A B B A). Unread counts \
             {:.0}/s, {} failed, latency {}; profiles {:.0}/s, {} failed, latency {}; CPU \
             meanwhile: {unread_cpu}",
            seconds / 4.0,
            unread.rate,
            unread.failed,
            unread.latencies.summary(),
            profiles.rate,
            profiles.failed,
            profiles.latencies.summary(),
        ),
        format!(
            "memory: peak RSS (VmHWM) of each service after all of the above; the bare HTTP \
             baseline {}; broker: {}",
            bare_peak.map_or_else(|| "not measured".to_owned(), |mib| format!("{mib:.1} MiB")),
            broker.summary()
        ),
    ];

    fixture.report("stack", &measures, &notes)?;
    drop(db);
    fixture.finish().await
}

/// Waits until the read models hold the seeded population: a registration, a post and the
/// follows of each user.
async fn wait_until_seeded(db: &tokio_postgres::Client, users: usize) -> Result<()> {
    let events = i64::try_from(users * (2 + FOLLOWS_PER_USER))?;
    chronicle_tests::bench::wait_until_projected(db, events).await?;
    Ok(())
}
