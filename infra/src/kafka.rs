//! Kafka: settings, the events topic, and the event producer.
//!
//! Nothing here depends on a particular broker: the same settings work against Apache Kafka,
//! Redpanda, a managed Kafka, and tansu in development.

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
    /// `CHRONICLE_KAFKA_IDEMPOTENCE`: `true` (default) makes the producer idempotent, so that
    /// its retries never write an event twice or out of order. Turn it off only for a broker that
    /// mishandles idempotent producers (tansu 0.6 cannot restart under one): Chronicle stays
    /// exactly-once without it (the projector drops an event id it has seen), and each command
    /// is answered only after its event is acknowledged, so commands of one client keep their
    /// order.
    #[arg(long = "kafka-idempotence", env = "CHRONICLE_KAFKA_IDEMPOTENCE", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub idempotence: bool,
}

impl KafkaArgs {
    /// Client settings every Chronicle Kafka client starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "chronicle")
            .set("socket.keepalive.enable", "true");
        config
    }

    /// Creates the events topic when it is missing (infinite retention, the configured partition
    /// count) and returns its partition count. Waits up to `patience` for the broker.
    pub async fn ensure_topic(&self, patience: Duration) -> anyhow::Result<i32> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("failed to create the Kafka admin client")?;
        let deadline = tokio::time::Instant::now() + patience;
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

/// Why an event was not appended.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker did not acknowledge the event in time; it was not appended.
    #[error("the broker did not acknowledge the event: {0}")]
    Unavailable(KafkaError),
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
        let timeout_ms = timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = kafka
            .client_config()
            .set("acks", "all")
            .set("enable.idempotence", kafka.idempotence.to_string())
            .set("linger.ms", "2")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms)
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
                metrics::counter!("events_produce_errors_total").increment(1);
                Err(ProduceError::Unavailable(err))
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
            idempotence: true,
        }
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
        assert!(
            matches!(result, Err(ProduceError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
