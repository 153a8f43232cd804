//! A workload for benchmarks and fault tests: a plausible social history written straight to
//! the events topic, as a foreign producer would, bypassing the command API.

use std::collections::HashMap;
use std::time::Duration;

use chronicle_events::{
    Envelope, Event, PostDeleted, PostLiked, PostPublished, PostUnliked, ProfileUpdated,
    UserFollowed, UserRegistered,
};
use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

/// A small deterministic generator (xorshift); seed it with anything but zero.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Zipf(s = 1) over the first `n` items, sampled from a cumulative table by inverse CDF: item
/// `k` (from 0) is drawn in proportion to `1 / (k + 1)`.
pub struct Zipf(Vec<f64>);

impl Zipf {
    /// A table for up to `n` items.
    pub fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        Zipf(
            (1..=n)
                .map(|k| {
                    total += 1.0 / k as f64;
                    total
                })
                .collect(),
        )
    }

    /// An index in `0..n` (`n` at most the table's size), low indexes most often.
    pub fn sample(&self, rng: &mut Rng, n: usize) -> usize {
        let n = n.min(self.0.len()).max(1);
        let x = (rng.next_u64() as f64 / u64::MAX as f64) * self.0[n - 1];
        self.0[..n].partition_point(|c| *c < x).min(n - 1)
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Produced {
    /// How many events.
    pub events: usize,
    /// Per partition, the offset after the last event written to it.
    pub ends: HashMap<i32, i64>,
}

/// Writes `count` events of a plausible social history to the topic, keyed by aggregate as
/// Chronicle's command API keys them: users, a follow graph, posts by Zipf-distributed authors
/// (a tenth of them replies), Zipf-distributed likes of recent posts, a few percent unlikes,
/// deletes and profile updates. The same `count` always yields the same history shape.
pub async fn generate(brokers: &str, topic: &str, count: usize) -> Result<Produced, KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000")
        .create()?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let users_total = (count / 100).max(10);
    let zipf_users = Zipf::new(users_total);
    let zipf_posts = Zipf::new(count);
    let mut users: Vec<Uuid> = Vec::with_capacity(users_total);
    // Posts newest last; (id, author, deleted); and live likes as (post index, user).
    let mut posts: Vec<(Uuid, Uuid, bool)> = Vec::new();
    let mut likes: Vec<(usize, Uuid)> = Vec::new();
    let start = chrono::Utc::now() - chrono::Duration::days(30);
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut sent = 0;
    let mut produced = Produced::default();
    while sent < count {
        let at = start + chrono::Duration::milliseconds(sent as i64 * 2);
        let roll = rng.below(100);
        let event = if users.len() < 10 || (users.len() < users_total && roll < 2) {
            let user_id = Uuid::now_v7();
            users.push(user_id);
            Event::UserRegistered(UserRegistered {
                user_id,
                handle: format!("user_{}", users.len()).into(),
                display_name: format!("User {}", users.len()).into(),
                bio: String::new().into(),
            })
        } else if roll < 12 {
            let follower = users[zipf_users.sample(&mut rng, users.len())];
            let followee = users[rng.below(users.len())];
            Event::UserFollowed(UserFollowed {
                follower_id: follower,
                followee_id: followee,
            })
        } else if roll < 15 {
            let user_id = users[rng.below(users.len())];
            Event::ProfileUpdated(ProfileUpdated {
                user_id,
                display_name: None,
                bio: Some(format!("bio at event {sent}").into()),
            })
        } else if roll < 38 || posts.is_empty() {
            let author = users[zipf_users.sample(&mut rng, users.len())];
            let post_id = Uuid::now_v7();
            let reply_to = (!posts.is_empty() && rng.chance(10))
                .then(|| posts[posts.len() - 1 - zipf_posts.sample(&mut rng, posts.len())].0);
            posts.push((post_id, author, false));
            Event::PostPublished(PostPublished {
                post_id,
                author_id: author,
                body: format!("post number {} with some words in it", posts.len()).into(),
                reply_to,
            })
        } else if roll < 40 {
            let index = posts.len() - 1 - rng.below(posts.len());
            let (post_id, author, deleted) = posts[index];
            if deleted {
                continue;
            }
            posts[index].2 = true;
            Event::PostDeleted(PostDeleted {
                post_id,
                author_id: author,
            })
        } else if roll < 43 && !likes.is_empty() {
            let (index, user_id) = likes.swap_remove(rng.below(likes.len()));
            Event::PostUnliked(PostUnliked {
                post_id: posts[index].0,
                user_id,
            })
        } else {
            // Recent posts are liked most: Zipf over age.
            let index = posts.len() - 1 - zipf_posts.sample(&mut rng, posts.len());
            let user_id = users[rng.below(users.len())];
            likes.push((index, user_id));
            Event::PostLiked(PostLiked {
                post_id: posts[index].0,
                user_id,
            })
        };
        let actor = match &event {
            Event::PostLiked(e) => e.user_id,
            Event::PostUnliked(e) => e.user_id,
            Event::PostPublished(e) => e.author_id,
            Event::PostDeleted(e) => e.author_id,
            other => other.aggregate_id(),
        };
        let envelope = Envelope::at(at, actor, event);
        let key = envelope.aggregate_id().to_string();
        let payload = envelope.to_json();
        let producer = producer.clone();
        let topic = topic.to_owned();
        in_flight.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(300),
                )
                .await
                .map(|delivery| (delivery.partition, delivery.offset))
                .map_err(|(err, _)| err)
        });
        sent += 1;
        while in_flight.len() >= 50_000 {
            if let Some(result) = in_flight.next().await {
                note(&mut produced, result?);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        note(&mut produced, result?);
    }
    produced.events = sent;
    Ok(produced)
}

fn note(produced: &mut Produced, (partition, offset): (i32, i64)) {
    let end = produced.ends.entry(partition).or_default();
    *end = (*end).max(offset + 1);
}
