//! Histories written by an earlier release (`tests/fixtures/<name>/`): the database it left
//! (`database.sql`, a pg_dump with INSERTs) and its log (`events.jsonl`, every record of its topic
//! by partition and offset). Loaded into a test's fresh database and topic before the services
//! start, they are what an operator has when upgrading.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// One record of the fixture's log.
struct Record {
    partition: i32,
    offset: i64,
    key: String,
    headers: Vec<(String, String)>,
    payload: String,
}

impl Record {
    fn parse(line: &str) -> Option<Record> {
        let json: Value = serde_json::from_str(line).ok()?;
        let text = |field: &str| json[field].as_str().map(str::to_owned);
        let headers = json["headers"]
            .as_array()?
            .iter()
            .map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
            .collect::<Option<_>>()?;
        Some(Record {
            partition: i32::try_from(json["partition"].as_i64()?).ok()?,
            offset: json["offset"].as_i64()?,
            key: text("key")?,
            headers,
            payload: text("payload")?,
        })
    }
}

fn path_of(name: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .join(file)
}

/// Loads fixture `name` into the database at `database_url` (empty) and `topic` (empty, with
/// the fixture's partitions): the dump, its stored offsets renamed to `topic`, then every record
/// at its own partition and offset.
pub(super) async fn load_history(name: &str, database_url: &str, brokers: &str, topic: &str) {
    let sql_path = path_of(name, "database.sql");
    let sql = std::fs::read_to_string(&sql_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", sql_path.display()));
    let db = super::connect_postgres(database_url).await;
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("cannot load {}: {e:?}", sql_path.display()));
    for table in ["offsets", "dead_letters"] {
        db.execute(
            &format!("UPDATE projection.{table} SET topic = $1"),
            &[&topic],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot rename the topic in projection.{table}: {e:?}"));
    }

    let events_path = path_of(name, "events.jsonl");
    let events = std::fs::read_to_string(&events_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", events_path.display()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("failed to create a Kafka producer");
    for line in events.lines() {
        let record = Record::parse(line)
            .unwrap_or_else(|| panic!("{}: not a record: {line}", events_path.display()));
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let delivery = producer
            .send(
                FutureRecord::to(topic)
                    .partition(record.partition)
                    .key(&record.key)
                    .payload(&record.payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("failed to produce the fixture to {topic}: {e}"));
        assert_eq!(
            (delivery.partition, delivery.offset),
            (record.partition, record.offset),
            "a fixture record landed elsewhere than in its log: is {topic} empty, with the \
             fixture's partitions?"
        );
    }
}
