//! Kafka: settings, the events topic, and the event producer.
//!
//! Nothing here depends on a particular broker: the same settings work against Apache Kafka,
//! Redpanda and a managed Kafka; development runs Apache Kafka. What a managed Kafka needs of
//! its clients (TLS, SASL) is passed through to librdkafka: see [`properties`].

mod probe;
pub mod properties;

pub use properties::{KafkaProperties, PropertiesError, is_secret};

use std::time::Duration;

use anyhow::{Context, bail};
use chronicle_events::Envelope;
use chrono::SecondsFormat;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::Position;

/// Where the event log lives.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// `KAFKA_BROKERS`: bootstrap servers, comma-separated (default `127.0.0.1:9092`).
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// `CHRONICLE_TOPIC`: the events topic (default `chronicle.events`).
    #[arg(
        long = "topic",
        env = "CHRONICLE_TOPIC",
        default_value = "chronicle.events"
    )]
    pub topic: String,
    /// `CHRONICLE_PARTITIONS`: partitions of the topic when it is created (default 12).
    #[arg(long = "partitions", env = "CHRONICLE_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// `CHRONICLE_REPLICATION_FACTOR`: replicas of each partition when the topic is created
    /// (default 1; use 3 on a production cluster).
    #[arg(long = "replication-factor", env = "CHRONICLE_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=100))]
    pub replication_factor: i32,
    /// `CHRONICLE_KAFKA_PROPERTIES_FILE` and `CHRONICLE_KAFKA_<PROPERTY>`: librdkafka
    /// properties for every client (none by default), checked at start-up; see [`properties`].
    #[command(flatten)]
    pub properties: KafkaProperties,
}

impl KafkaArgs {
    /// Client settings every Chronicle Kafka client starts from: Chronicle's defaults, then the
    /// operator's pass-through properties (which may replace those defaults), then the brokers.
    /// Each client then sets what it needs; the pass-through cannot touch those settings (see
    /// [`properties::CHRONICLE_OWNS`]).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("client.id", "chronicle")
            .set("socket.keepalive.enable", "true");
        self.properties.apply(&mut config);
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Creates the events topic when it is missing (infinite retention, the configured partition
    /// count) and returns its partition count. Waits up to `patience` for the broker.
    pub async fn ensure_topic(&self, patience: Duration) -> anyhow::Result<i32> {
        self.properties.log();
        let deadline = tokio::time::Instant::now() + patience;
        probe::await_brokers(self.client_config(), &self.brokers, &self.topic, deadline).await?;
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("failed to create the Kafka admin client")?;
        loop {
            match self.try_ensure_topic(&admin).await {
                Ok(partitions) => return Ok(partitions),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %format!("{err:#}"), topic = %self.topic, "broker not ready, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("the Kafka broker at {} is not reachable", self.brokers)
                    });
                }
            }
        }
    }

    async fn try_ensure_topic(
        &self,
        admin: &AdminClient<DefaultClientContext>,
    ) -> anyhow::Result<i32> {
        let topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&topic], &options).await?;
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = self.partitions, "created topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("failed to create topic {name}: {code}"),
            }
        }
        let partitions = self.partition_count(admin.inner()).await?;
        if partitions != self.partitions {
            tracing::info!(
                topic = %self.topic, partitions, configured = self.partitions,
                "topic exists with a different partition count; using the topic's"
            );
        }
        Ok(partitions)
    }

    /// The topic's partition count, from the broker's metadata.
    pub async fn partition_count<C: rdkafka::ClientContext + 'static>(
        &self,
        client: &rdkafka::client::Client<C>,
    ) -> anyhow::Result<i32> {
        let topic = self.topic.clone();
        let count = tokio::task::block_in_place(|| {
            let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            Ok::<_, KafkaError>(count)
        })?;
        if count == 0 {
            bail!("topic {} has no partitions (yet)", self.topic);
        }
        Ok(i32::try_from(count)?)
    }
}

/// Why a send did not end in an acknowledgement: whether the event may be in the log.
///
/// librdkafka knows per message whether it was persisted (`rd_kafka_message_status`), but
/// rdkafka 0.39 offers that only through the raw C API, which this workspace forbids
/// (`unsafe_code = "forbid"`). The error code decides instead, and whatever it does not prove
/// unsent counts as [`ProduceError::Unknown`]: a message that timed out may have been written
/// and only its acknowledgement lost (`message.timeout.ms` cannot tell a broker that never got
/// the request from one that appended it and went silent).
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The event certainly is not in the log and never will be: the local queue was full, the
    /// message too large, the topic unknown, the producer not authorized, or a broker refused
    /// it before appending.
    #[error("the event log refused the event: {0}")]
    Refused(KafkaError),
    /// The event may be in the log, or may appear there later: the send timed out after the
    /// message may have reached a broker, or the broker answered that it appended the event
    /// without enough replicas.
    #[error("the event log did not say whether it appended the event: {0}")]
    Unknown(KafkaError),
}

impl ProduceError {
    /// Sorts a failed send by what the error proves; see [`ProduceError`].
    pub fn classify(err: KafkaError) -> ProduceError {
        use RDKafkaErrorCode as C;
        let refused = match &err {
            KafkaError::MessageProduction(code) => matches!(
                code,
                C::QueueFull
                    | C::MessageSizeTooLarge
                    | C::InvalidMessageSize
                    | C::MessageBatchTooLarge
                    | C::UnknownTopic
                    | C::UnknownPartition
                    | C::UnknownTopicOrPartition
                    | C::InvalidTopic
                    | C::TopicAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::TransactionalIdAuthorizationFailed
                    | C::SaslAuthenticationFailed
                    | C::Authentication
                    | C::InvalidRequiredAcks
                    | C::InvalidRecord
                    | C::InvalidMessage
                    | C::InvalidTimestamp
                    | C::InvalidArgument
                    | C::PolicyViolation
                    | C::UnsupportedForMessageFormat
                    | C::UnsupportedVersion
                    | C::NotEnoughReplicas
                    | C::PurgeQueue
                    | C::KeySerialization
                    | C::ValueSerialization
            ),
            _ => false,
        };
        if refused {
            ProduceError::Refused(err)
        } else {
            ProduceError::Unknown(err)
        }
    }
}

/// Appends events to the log and answers only once the broker has acknowledged them (acks=all,
/// idempotent). Cheap to clone.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    topic: String,
    source: &'static str,
}

impl EventProducer {
    /// A producer for `kafka.topic`. `source` names the producing service in `ce_source`.
    /// Every send either succeeds or fails within `timeout`.
    pub fn new(kafka: &KafkaArgs, source: &'static str, timeout: Duration) -> anyhow::Result<Self> {
        let producer: FutureProducer = producer_config(kafka, timeout)
            .create()
            .context("failed to create the Kafka producer")?;
        Ok(EventProducer {
            producer,
            topic: kafka.topic.clone(),
            source,
        })
    }

    /// Appends one event and returns where it landed.
    pub async fn send(&self, envelope: &Envelope) -> Result<Position, ProduceError> {
        let key = envelope.aggregate_id().to_string();
        let event_id = envelope.event_id.to_string();
        let event_type = format!("chronicle.{}", envelope.kind().name());
        let time = envelope
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let payload = envelope.to_json();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_id", &event_id))
            .insert(header("ce_type", &event_type))
            .insert(header("ce_source", self.source))
            .insert(header("ce_time", &time))
            .insert(header("content-type", "application/json"));
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        // librdkafka fails the message itself after `message.timeout.ms`; the queue timeout only
        // bounds the wait for room in a full local queue.
        let started = std::time::Instant::now();
        let sent = self
            .producer
            .send(record, Timeout::After(Duration::ZERO))
            .await;
        let outcome = if sent.is_ok() {
            "acknowledged"
        } else {
            "failed"
        };
        metrics::histogram!("events_produce_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match sent {
            Ok(delivery) => Ok(Position {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((err, _)) => {
                let err = ProduceError::classify(err);
                let outcome = match err {
                    ProduceError::Refused(_) => "refused",
                    ProduceError::Unknown(_) => "unknown",
                };
                metrics::counter!("events_produce_errors_total", "outcome" => outcome).increment(1);
                Err(err)
            }
        }
    }

    /// Whether the broker answers a metadata request for the topic.
    pub async fn is_ready(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok_and(|m| m.topics().iter().any(|t| t.error().is_none()))
        })
        .await
        .unwrap_or(false)
    }

    /// Delivers what is still queued, waiting at most `timeout`. Call before exiting: dropping
    /// a producer discards queued messages.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "producer flush incomplete"),
            Err(err) => tracing::warn!(error = %err, "producer flush task failed"),
        }
    }
}

/// The producer's settings: acks from every in-sync replica, idempotent retries, a short linger
/// (each command waits for its event), and `timeout` for each send.
fn producer_config(kafka: &KafkaArgs, timeout: Duration) -> ClientConfig {
    let timeout_ms = timeout.as_millis().max(1).to_string();
    let mut config = kafka.client_config();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", &timeout_ms)
        .set("request.timeout.ms", &timeout_ms);
    config
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_events::{Event, PostLiked};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use uuid::Uuid;

    fn args(brokers: String) -> KafkaArgs {
        KafkaArgs {
            brokers,
            topic: "unit.events".into(),
            partitions: 3,
            replication_factor: 1,
            properties: KafkaProperties::default(),
        }
    }

    fn with_properties(pairs: &[(&str, &str)]) -> KafkaArgs {
        let variables = pairs
            .iter()
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v)));
        KafkaArgs {
            properties: KafkaProperties::load(variables, None).expect("valid properties"),
            ..args("broker.example:9093".into())
        }
    }

    const MANAGED_KAFKA: &[(&str, &str)] = &[
        ("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("CHRONICLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        ("CHRONICLE_KAFKA_SASL_USERNAME", "chronicle"),
        ("CHRONICLE_KAFKA_SASL_PASSWORD", "the-sasl-password"),
        ("CHRONICLE_KAFKA_CLIENT_ID", "chronicle-eu-1"),
    ];

    #[test]
    fn pass_through_reaches_every_client_but_not_over_chronicle_s_settings() {
        let kafka = with_properties(MANAGED_KAFKA);
        let config = kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.password"), Some("the-sasl-password"));
        // A default of Chronicle's gives way to the operator's value...
        assert_eq!(config.get("client.id"), Some("chronicle-eu-1"));
        assert_eq!(config.get("bootstrap.servers"), Some("broker.example:9093"));
        // ...and the producer's guarantees stand, as librdkafka itself reports them.
        let native = producer_config(&kafka, Duration::from_secs(5))
            .create_native_config()
            .expect("a valid producer configuration");
        assert_eq!(native.get("request.required.acks").expect("acks"), "-1");
        assert_eq!(
            native.get("enable.idempotence").expect("idempotence"),
            "true"
        );
        assert_eq!(
            native.get("security.protocol").expect("protocol"),
            "sasl_ssl"
        );
    }

    #[test]
    fn a_sasl_ssl_scram_client_can_be_created() {
        // librdkafka refuses SASL_SSL unless it was built with OpenSSL (`ssl-vendored`).
        let kafka = with_properties(MANAGED_KAFKA);
        let producer: Result<FutureProducer, _> =
            producer_config(&kafka, Duration::from_secs(5)).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn gssapi_is_not_built_in_and_says_so() {
        let kafka = with_properties(&[
            ("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("CHRONICLE_KAFKA_SASL_MECHANISM", "GSSAPI"),
        ]);
        let producer: Result<FutureProducer, _> =
            producer_config(&kafka, Duration::from_secs(5)).create();
        let err = producer.err().expect("no GSSAPI provider").to_string();
        assert!(err.contains("GSSAPI"), "{err}");
    }

    #[test]
    fn kafka_args_debug_output_shows_no_secret() {
        let kafka = with_properties(MANAGED_KAFKA);
        let debug = format!("{kafka:?}");
        assert!(!debug.contains("the-sasl-password"), "{debug}");
        assert!(
            debug.contains("\"sasl.password\": \"[redacted]\""),
            "{debug}"
        );
        assert!(debug.contains("SCRAM-SHA-256"), "{debug}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_event_lands_keyed_by_its_aggregate_with_cloudevents_headers() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let kafka = args(cluster.bootstrap_servers());
        // The mock cluster does not implement CreateTopics; make the topic directly.
        cluster.create_topic(&kafka.topic, 3, 1).expect("topic");
        let producer =
            EventProducer::new(&kafka, "/test", Duration::from_secs(5)).expect("producer");
        let (post, user) = (Uuid::now_v7(), Uuid::now_v7());
        let envelope = Envelope::new(
            user,
            Event::PostLiked(PostLiked {
                post_id: post,
                user_id: user,
            }),
        );

        let position = producer.send(&envelope).await.expect("delivered");

        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", "unit")
            .create()
            .expect("consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &kafka.topic,
                position.partition,
                rdkafka::Offset::Offset(position.offset),
            )
            .expect("partition");
        consumer.assign(&assignment).expect("assign");
        let message = consumer
            .poll(Duration::from_secs(10))
            .expect("a message")
            .expect("no error");
        assert_eq!(message.key(), Some(post.to_string().as_bytes()));
        assert_eq!(
            Envelope::from_json(message.payload().expect("payload")).expect("decodes"),
            envelope
        );
        let headers = message.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce_id"), Some(envelope.event_id.to_string()));
        assert_eq!(header("ce_type").as_deref(), Some("chronicle.PostLiked"));
        assert_eq!(header("ce_source").as_deref(), Some("/test"));
        assert!(header("ce_time").is_some_and(|t| t.ends_with('Z')));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_broker_that_is_down_fails_the_send_within_the_timeout() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let kafka = args(cluster.bootstrap_servers());
        cluster.create_topic(&kafka.topic, 3, 1).expect("topic");
        let producer =
            EventProducer::new(&kafka, "/test", Duration::from_millis(500)).expect("producer");
        cluster.broker_down(1).expect("down");
        let user = Uuid::now_v7();
        let envelope = Envelope::new(
            user,
            Event::PostLiked(PostLiked {
                post_id: user,
                user_id: user,
            }),
        );
        let started = std::time::Instant::now();
        let result = producer.send(&envelope).await;
        // The message was never sent, but nothing tells librdkafka's timeout from one of a
        // message the broker appended without answering: it counts as unknown.
        assert!(
            matches!(
                result,
                Err(ProduceError::Unknown(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut
                )))
            ),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn only_errors_that_prove_the_event_unsent_are_refusals() {
        use RDKafkaErrorCode as C;
        let class = |code| match ProduceError::classify(KafkaError::MessageProduction(code)) {
            ProduceError::Refused(_) => "refused",
            ProduceError::Unknown(_) => "unknown",
        };
        for code in [
            C::QueueFull,
            C::MessageSizeTooLarge,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::NotEnoughReplicas,
            C::PurgeQueue,
        ] {
            assert_eq!(class(code), "refused", "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::OperationTimedOut,
            C::RequestTimedOut,
            C::BrokerTransportFailure,
            C::NetworkException,
            C::NotEnoughReplicasAfterAppend,
            C::PurgeInflight,
            C::Fatal,
            C::AllBrokersDown,
            C::Unknown,
        ] {
            assert_eq!(class(code), "unknown", "{code:?}");
        }
        // Errors that are not about one message's production prove nothing either.
        assert!(matches!(
            ProduceError::classify(KafkaError::Canceled),
            ProduceError::Unknown(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_message_too_large_is_refused_at_once() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let kafka = KafkaArgs {
            properties: KafkaProperties::load(
                [(
                    std::ffi::OsString::from("CHRONICLE_KAFKA_MESSAGE_MAX_BYTES"),
                    std::ffi::OsString::from("1000"),
                )],
                None,
            )
            .expect("valid properties"),
            ..args(cluster.bootstrap_servers())
        };
        cluster.create_topic(&kafka.topic, 3, 1).expect("topic");
        let producer =
            EventProducer::new(&kafka, "/test", Duration::from_secs(5)).expect("producer");
        let user = Uuid::now_v7();
        let envelope = Envelope::new(
            user,
            Event::PostPublished(chronicle_events::PostPublished {
                post_id: user,
                author_id: user,
                body: "x".repeat(1000).into(),
                reply_to: None,
            }),
        );
        let result = producer.send(&envelope).await;
        assert!(
            matches!(result, Err(ProduceError::Refused(_))),
            "{result:?}"
        );
    }
}
