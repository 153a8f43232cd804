//! Failover on Apache Kafka: a three-node cluster whose partition leader is SIGKILLed under
//! command load ([`brokers`]), and projectors of one consumer group SIGKILLed under load, once
//! with a survivor and again and again with restarts, under both consumer group protocols
//! ([`group`]). Every test prints its figures.
//!
//! What is shared here: private brokers, the group protocol settings the group tests run under,
//! probe users (one per partition, whose profile updates show that a partition is applied again),
//! and reading a projector's partitions from its log.

mod brokers;
mod group;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::broker::{ClusterBuilder, KafkaCluster};
use crate::harness::{TestApp, TestUser, scratch_dir};

/// Starts `builder`'s nodes in a directory of their own under the scratch directory.
async fn start_cluster(builder: ClusterBuilder, what: &str) -> KafkaCluster {
    let name = format!("{what}-{}", uuid::Uuid::now_v7().simple());
    tokio::task::spawn_blocking(move || builder.start(&scratch_dir(), &name))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The partition and offset of a position token (URL-safe base64 of the partition and offset,
/// big-endian; see `infra/src/position.rs`).
fn decode_position(position: &str) -> (i32, i64) {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(position)
        .unwrap_or_else(|e| panic!("position {position:?} is not base64: {e}"));
    let bytes: [u8; 12] = bytes
        .try_into()
        .unwrap_or_else(|_| panic!("position {position:?} is not 12 bytes"));
    let (partition, offset) = bytes.split_at(4);
    (
        i32::from_be_bytes(partition.try_into().expect("4 bytes")),
        i64::from_be_bytes(offset.try_into().expect("8 bytes")),
    )
}

/// The partition of a position token.
fn partition_of(position: &str) -> i32 {
    decode_position(position).0
}

/// How the projectors' consumer group runs: the client's protocol and the broker's group
/// settings.
#[derive(Debug, Clone, Copy)]
enum GroupSetup {
    /// The classic protocol, with the projector's own 6 s session timeout.
    Classic,
    /// The consumer protocol (KIP-848) on a broker with the defaults of a freshly formatted
    /// Kafka 4.1.1: what a production cluster does unless its operators lower them.
    ConsumerBrokerDefaults,
    /// The consumer protocol on a broker whose group settings are lowered to the classic
    /// projector's (session timeout 6 s, heartbeats every second).
    ConsumerBrokerLowered,
}

impl GroupSetup {
    /// `CHRONICLE_KAFKA_GROUP_PROTOCOL`.
    fn protocol(self) -> &'static str {
        match self {
            GroupSetup::Classic => "classic",
            GroupSetup::ConsumerBrokerDefaults | GroupSetup::ConsumerBrokerLowered => "consumer",
        }
    }

    /// Broker settings on top of the shared ones.
    fn broker_properties(self) -> &'static [(&'static str, &'static str)] {
        match self {
            GroupSetup::Classic | GroupSetup::ConsumerBrokerDefaults => &[],
            // The minimums (45 s and 5 s by default) bound both the broker-wide values and any
            // per-group override, so they come down too.
            GroupSetup::ConsumerBrokerLowered => &[
                ("group.consumer.min.session.timeout.ms", "6000"),
                ("group.consumer.session.timeout.ms", "6000"),
                ("group.consumer.min.heartbeat.interval.ms", "1000"),
                ("group.consumer.heartbeat.interval.ms", "1000"),
            ],
        }
    }

    /// How long the group waits for a silent member before it hands its partitions on.
    fn session_timeout(self) -> Duration {
        match self {
            // projector/src/consumer.rs sets the classic one; the broker's
            // group.consumer.session.timeout.ms defaults to 45 s.
            GroupSetup::Classic | GroupSetup::ConsumerBrokerLowered => Duration::from_secs(6),
            GroupSetup::ConsumerBrokerDefaults => Duration::from_secs(45),
        }
    }

    /// How often members heartbeat (and so learn of a new assignment).
    fn heartbeat_interval(self) -> Duration {
        match self {
            GroupSetup::Classic | GroupSetup::ConsumerBrokerLowered => Duration::from_secs(1),
            GroupSetup::ConsumerBrokerDefaults => Duration::from_secs(5),
        }
    }

    /// A private single-node broker with this setup's group settings.
    async fn broker(self) -> KafkaCluster {
        let mut builder = KafkaCluster::builder();
        for (key, value) in self.broker_properties() {
            builder = builder.property(key, value);
        }
        start_cluster(builder, "group-broker").await
    }

    /// A Chronicle on `broker` whose projectors use this setup's protocol.
    fn app(self, broker: &KafkaCluster) -> crate::harness::TestAppBuilder {
        TestApp::builder()
            .broker(&broker.address())
            .env("CHRONICLE_KAFKA_GROUP_PROTOCOL", self.protocol())
    }
}

/// One registered user per partition, whose profile updates (keyed by the user) land there.
async fn probe_users(app: &TestApp) -> BTreeMap<i32, TestUser> {
    let mut probes = BTreeMap::new();
    let partitions = i32::try_from(app.partitions).expect("partition count fits in i32");
    for n in 0..500 {
        if probes.len() == app.partitions as usize {
            break;
        }
        let user = app.register_user(&format!("probe_{n:03}"), "Probe").await;
        probes.entry(partition_of(&user.position)).or_insert(user);
    }
    assert!(
        (0..partitions).all(|p| probes.contains_key(&p)),
        "500 registrations did not cover the {partitions} partitions"
    );
    let positions: Vec<String> = probes.values().map(|u| u.position.clone()).collect();
    app.wait_for(&positions).await;
    probes
}

/// Sends one profile update per partition and returns, per partition, how long after `since`
/// the read models showed it (waiting on its position, at most `deadline`).
async fn probe_every_partition(
    app: &TestApp,
    probes: &BTreeMap<i32, TestUser>,
    label: &str,
    since: Instant,
    deadline: Duration,
) -> BTreeMap<i32, Duration> {
    let waits = probes.iter().map(|(partition, user)| async move {
        let resp = app
            .update_profile(&user.token, json!({ "bio": label }))
            .await;
        resp.assert_status(202);
        let position = resp.str_field("position");
        assert_eq!(partition_of(&position), *partition, "{label}: {resp}");
        app.wait_for_within(std::slice::from_ref(&position), deadline)
            .await;
        (*partition, since.elapsed())
    });
    futures_util::future::join_all(waits)
        .await
        .into_iter()
        .collect()
}

/// The partitions a projector owned when it died, replayed from its log's "partitions
/// assigned" and "partitions revoked" lines (for the figures only).
fn owned_at_death(log: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut owned = std::collections::BTreeSet::new();
    for line in text.lines() {
        let listed = || -> Vec<i32> {
            line.split_once("partitions=[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(list, _)| {
                    list.split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        if line.contains("partitions assigned") {
            if line.contains("incremental=false") {
                owned.clear();
            }
            owned.extend(listed());
        } else if line.contains("partitions revoked") {
            for partition in listed() {
                owned.remove(&partition);
            }
        }
    }
    owned.into_iter().collect()
}
