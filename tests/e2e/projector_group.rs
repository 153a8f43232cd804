//! Two projector processes in one consumer group share the partitions and together apply every
//! event exactly once, under either group protocol; and the offsets the group reports to Kafka
//! (advisory, for Kafka's tools) follow to the end of the log.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::crash::{expected, seed};
use crate::harness::{Rng, TestApp};
use crate::load::{self, LoadConfig};
use crate::model::assert_read_models;

/// Blocks until the projectors' consumer group has committed, in Kafka, every partition of the
/// topic up to its end (the projector reports what it applied; see `report_applied` in
/// projector/src/consumer.rs), within `deadline`. Returns how long that took. It reads the
/// committed offsets as an outsider with the group's id: without subscribing, it never joins.
pub(crate) async fn wait_for_committed_log_end(app: &TestApp, deadline: Duration) -> Duration {
    let (brokers, topic, group) = (
        app.kafka_brokers.clone(),
        app.topic.clone(),
        app.group.clone(),
    );
    let partitions = i32::try_from(app.partitions).expect("partition count fits in i32");
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("failed to create a Kafka consumer");
        let started = Instant::now();
        loop {
            let mut wanted = TopicPartitionList::new();
            for partition in 0..partitions {
                wanted.add_partition(&topic, partition);
            }
            let committed = reader
                .committed_offsets(wanted, Duration::from_secs(10))
                .expect("failed to read the group's committed offsets");
            let mut behind = Vec::new();
            for partition in 0..partitions {
                let (_, end) = reader
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .expect("failed to read a high watermark");
                let at = committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                    .and_then(|o| match o {
                        Offset::Offset(at) => Some(at),
                        _ => None,
                    });
                if at.unwrap_or(0) < end {
                    behind.push((partition, at, end));
                }
            }
            if behind.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < deadline,
                "the group's committed offsets did not reach the end of the log within {deadline:?}; \
                 behind (partition, committed, end): {behind:?}"
            );
            // Polling Kafka's committed offsets: what is waited for is a position, not a time.
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn two_projectors_in_one_group_apply_every_event_once(protocol: &str) {
    // Arrange
    let app = Arc::new(
        TestApp::builder()
            .projectors(2)
            .env("CHRONICLE_KAFKA_GROUP_PROTOCOL", protocol)
            .spawn()
            .await,
    );
    assert_eq!(app.running_projectors(), 2);
    let mut rng = Rng::for_test();
    println!(
        "projector group test ({protocol} protocol) seed {:#x}",
        rng.state()
    );
    let (users, seeded) = seed(&app, 8, 2).await;

    // Act
    let no_faults = Arc::new(AtomicBool::new(true));
    let config = LoadConfig {
        commands_per_user: 40,
        max_commands_per_user: 40,
    };
    let result = load::run(app.clone(), &users, &seeded, config, no_faults, &mut rng).await;
    app.wait_for_within(&result.positions, Duration::from_secs(120))
        .await;

    // Assert
    let model = expected(&users, &seeded, &result.ops);
    assert_read_models(&app, &model).await;
    let committed = wait_for_committed_log_end(&app, Duration::from_secs(30)).await;
    println!("{protocol}: committed offsets at the log end {committed:.1?} after the check began");
    assert_eq!(
        app.running_projectors(),
        2,
        "a projector of the group exited"
    );
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_projectors_in_one_group_apply_every_event_once_classic() {
    two_projectors_in_one_group_apply_every_event_once("classic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_projectors_in_one_group_apply_every_event_once_consumer_protocol() {
    two_projectors_in_one_group_apply_every_event_once("consumer").await;
}
