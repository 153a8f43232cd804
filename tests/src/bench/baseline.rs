//! The baselines that need only the broker: a producer with the command API's settings sending
//! records the size of the command API's as fast as they are acknowledged, and the broker's own
//! freshness (that producer to a bare consumer with the projector's fetch settings).
//!
//! The settings are copied from `infra/src/kafka.rs` (`EventProducer::new` and `send`, the
//! projector's consumer in `projector/src/consumer.rs`) rather than shared: this crate talks to
//! Chronicle only through HTTP, Kafka and SQL. Keep them in step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_events::{Envelope, Event, PostLiked, PostPublished};
use chrono::SecondsFormat;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::fixture::{PARTITIONS, Result};
use super::load::{Freshness, closed_loop, open_loop};

/// `ce_source` of the command API's events.
pub const COMMAND_API_SOURCE: &str = "/chronicle/command-api";

/// The command API's default `CHRONICLE_PRODUCE_TIMEOUT_MS`.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);

/// A producer with the command API's settings: acks=all, idempotent, linger.ms=2, message and
/// request timeouts of its default produce timeout.
pub fn command_api_producer(brokers: &str) -> Result<FutureProducer> {
    let timeout_ms = PRODUCE_TIMEOUT.as_millis().to_string();
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "chronicle")
        .set("socket.keepalive.enable", "true")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", &timeout_ms)
        .set("request.timeout.ms", &timeout_ms)
        .create()?)
}

/// Sends `envelope` as the command API does (keyed by its aggregate, JSON, the CloudEvents
/// headers) and waits for the acknowledgement: its (partition, offset).
pub async fn send_as_command_api(
    producer: &FutureProducer,
    topic: &str,
    envelope: &Envelope,
) -> std::result::Result<(i32, i64), String> {
    let key = envelope.aggregate_id().to_string();
    let event_id = envelope.event_id.to_string();
    let event_type = format!("chronicle.{}", envelope.kind().name());
    let time = envelope
        .occurred_at
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let payload = envelope.to_json();
    let header = |key, value| Header {
        key,
        value: Some(value),
    };
    let headers = OwnedHeaders::new_with_capacity(6)
        .insert(header("ce_specversion", "1.0"))
        .insert(header("ce_id", &event_id))
        .insert(header("ce_type", &event_type))
        .insert(header("ce_source", COMMAND_API_SOURCE))
        .insert(header("ce_time", &time))
        .insert(header("content-type", "application/json"));
    let record = FutureRecord::to(topic)
        .key(&key)
        .payload(&payload)
        .headers(headers);
    producer
        .send(record, Duration::ZERO)
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(err, _)| format!("send: {err}"))
}

/// The bare producer: `clients` sends in flight of likes, as the command API would write them,
/// to `topic` for `duration`. Events per second acknowledged.
pub async fn bare_producer(
    brokers: &str,
    topic: &str,
    clients: usize,
    duration: Duration,
) -> Result<f64> {
    let producer = &command_api_producer(brokers)?;
    let sent = closed_loop(clients, duration, |_, _| async move {
        let user = Uuid::now_v7();
        let envelope = Envelope::new(
            user,
            Event::PostLiked(PostLiked {
                post_id: Uuid::now_v7(),
                user_id: user,
            }),
        );
        send_as_command_api(producer, topic, &envelope)
            .await
            .is_ok()
    })
    .await;
    Ok(sent.rate)
}

/// The broker's own freshness, the floor under Chronicle's: a producer with the command API's
/// settings sends `rate` posts per second (as the command API writes them) for `duration` to
/// `topic` (fresh, [`PARTITIONS`] partitions), each on the clock; a bare consumer with the
/// projector's fetch settings (`fetch.wait.max.ms` = `fetch_wait_ms`) reads them. Each sample
/// is the time to the consumer's receipt from when the send was due and from its
/// acknowledgement (negative when the consumer had it first: Kafka answers the produce request
/// and the waiting fetch at the same moment, when the record is committed).
pub async fn broker_freshness(
    brokers: &str,
    topic: &str,
    rate: f64,
    duration: Duration,
    fetch_wait_ms: u32,
) -> Result<Freshness> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    // When each (partition, offset) reached the consumer.
    let received: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "chronicle")
        .set("socket.keepalive.enable", "true")
        .set("group.id", format!("{topic}.freshness"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let reader = {
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let at = Instant::now();
                if let Ok(mut received) = received.lock() {
                    received.insert((message.partition(), message.offset()), at);
                }
            }
        })
    };
    // Before the clock starts: the producer connects and gets its producer id (its first send
    // waits for both), and the consumer connects and sends its first fetch.
    let producer = command_api_producer(brokers)?;
    let warm_up = Envelope::new(
        Uuid::now_v7(),
        Event::PostLiked(PostLiked {
            post_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
        }),
    );
    send_as_command_api(&producer, topic, &warm_up).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (acknowledged, failures) = open_loop(rate, duration, |_, due| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            let author = Uuid::now_v7();
            let envelope = Envelope::new(
                author,
                Event::PostPublished(PostPublished {
                    post_id: Uuid::now_v7(),
                    author_id: author,
                    body: "how fresh is this".into(),
                    reply_to: None,
                }),
            );
            let at = send_as_command_api(&producer, &topic, &envelope).await?;
            Ok((at, due.into_std(), Instant::now()))
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let all_in = || -> Result<bool> {
        let received = received.lock().map_err(|_| "poisoned")?;
        Ok(acknowledged
            .iter()
            .all(|(at, _, _)| received.contains_key(at)))
    };
    while !all_in()? && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().map_err(|_| "the consumer thread panicked")?;
    let received = received.lock().map_err(|_| "poisoned")?;
    let millis = |from: Instant, to: Instant| match to.checked_duration_since(from) {
        Some(later) => later.as_secs_f64() * 1000.0,
        None => -(from.duration_since(to).as_secs_f64() * 1000.0),
    };
    let samples = Freshness::of(acknowledged.iter().filter_map(|(at, due, ack)| {
        let got = *received.get(at)?;
        Some((millis(*due, got), millis(*ack, got)))
    }));
    let total = (rate * duration.as_secs_f64()) as usize;
    if samples.len() < total * 99 / 100 {
        return Err(format!(
            "the bare consumer received {} of {total}; failed sends: {failures:?}",
            samples.len()
        )
        .into());
    }
    Ok(samples)
}
