//! `projector events`: prints the event log, for people looking at what happened.
//!
//! It reads every partition from the beginning up to its current end without joining the
//! consumer group (no offsets are stored anywhere), one line per event:
//! `partition<TAB>offset<TAB>key<TAB>json`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chronicle_infra::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Prints every event of `kafka.topic` (or of one partition) to stdout, then returns.
pub fn print_events(kafka: &KafkaArgs, only: Option<i32>) -> anyhow::Result<()> {
    // librdkafka wants a group id even for plain assignment; nothing is committed to it.
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "chronicle-inspect")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("failed to create the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), TIMEOUT)
        .with_context(|| format!("the broker at {} did not answer", kafka.brokers))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == kafka.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| only.is_none_or(|only| only == *p))
        .collect();
    anyhow::ensure!(
        !partitions.is_empty(),
        "topic {} has no such partitions",
        kafka.topic
    );

    // Where each partition ends now; events appended later are not waited for.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&kafka.topic, partition, TIMEOUT)?;
        if high > low {
            remaining.insert(partition, high);
            assignment.add_partition_offset(&kafka.topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(TIMEOUT) else {
            anyhow::bail!(
                "no events arrived for {} s; is the broker up?",
                TIMEOUT.as_secs()
            );
        };
        let message = message?;
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let payload = message
            .payload()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        writeln!(
            out,
            "{}\t{}\t{key}\t{payload}",
            message.partition(),
            message.offset()
        )?;
        if remaining
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&message.partition());
        }
    }
    out.flush()?;
    Ok(())
}
