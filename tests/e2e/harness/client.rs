//! What tests send to the services: raw requests, commands, queries, tokens, SQL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::ClientConfig;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::*;

impl TestApp {
    // ----- raw requests -------------------------------------------------------------------

    /// A request to the command API.
    pub(crate) fn command(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.command_url))
    }

    /// A GET request to the query API.
    pub(crate) fn query(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.query_url))
    }

    /// Sends a request and reads the whole answer.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Resp {
        let response = request.send().await.unwrap_or_else(|e| {
            panic!(
                "HTTP request failed: {e} (service logs: {})",
                self.log_dir.display()
            )
        });
        Resp::read(response).await
    }

    // ----- commands -----------------------------------------------------------------------

    /// `POST /v1/users`.
    pub(crate) async fn register(&self, handle: &str, display_name: &str) -> Resp {
        self.register_with(json!({ "handle": handle, "display_name": display_name }))
            .await
    }

    /// `POST /v1/users` with an arbitrary JSON body, given [`PASSWORD`] as its password
    /// when it names none.
    pub(crate) async fn register_with(&self, mut body: Value) -> Resp {
        if let Some(fields) = body.as_object_mut() {
            fields.entry("password").or_insert(json!(PASSWORD));
        }
        self.send(self.command(Method::POST, "/v1/users").json(&body))
            .await
    }

    /// `POST /v1/sessions`: a login.
    pub(crate) async fn login(&self, handle: &str, password: &str) -> Resp {
        self.send(
            self.command(Method::POST, "/v1/sessions")
                .json(&json!({ "handle": handle, "password": password })),
        )
        .await
    }

    /// `DELETE /v1/sessions/current`: a logout.
    pub(crate) async fn logout(&self, token: &str) -> Resp {
        self.send(
            self.command(Method::DELETE, "/v1/sessions/current")
                .bearer_auth(token),
        )
        .await
    }

    /// `DELETE /v1/users/me`: an erasure, confirmed with `password`.
    pub(crate) async fn erase(&self, token: &str, password: &str) -> Resp {
        self.send(
            self.command(Method::DELETE, "/v1/users/me")
                .bearer_auth(token)
                .json(&json!({ "password": password })),
        )
        .await
    }

    /// `PUT /v1/users/me/password` with `body`.
    pub(crate) async fn change_password(&self, token: &str, body: Value) -> Resp {
        self.send(
            self.command(Method::PUT, "/v1/users/me/password")
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// Produces the JSON envelope `json` as the command API would: keyed by its aggregate id.
    pub(crate) async fn produce_envelope(&self, json: &str) -> String {
        let envelope: Value = serde_json::from_str(json).expect("an envelope is JSON");
        let key = envelope["aggregate_id"]
            .as_str()
            .expect("an envelope names its aggregate");
        self.produce_raw(key, None, json.as_bytes()).await
    }

    /// Appends `payload` keyed `key` straight to the test topic (to `partition` if given), as
    /// a foreign producer would, bypassing the command API.
    /// Returns the record's position.
    pub(crate) async fn produce_raw(
        &self,
        key: &str,
        partition: Option<i32>,
        payload: &[u8],
    ) -> String {
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .expect("failed to create a Kafka producer");
        let mut record = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("failed to produce to {}: {e}", self.topic));
        chronicle_infra::position::Position {
            partition: delivery.partition,
            offset: delivery.offset,
        }
        .encode()
    }

    /// A consumer of the test topic outside the projector's group, reading every partition
    /// from the beginning. It blocks: use it inside `spawn_blocking`.
    pub(crate) fn topic_reader(&self, name: &str) -> rdkafka::consumer::BaseConsumer {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("group.id", format!("t_{}.{name}", self.id))
            .set("enable.auto.commit", "false")
            .create()
            .expect("failed to create a Kafka consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in 0..self.partitions {
            let partition = i32::try_from(partition).expect("partition fits in i32");
            assignment
                .add_partition_offset(&self.topic, partition, rdkafka::Offset::Beginning)
                .expect("valid partition offset");
        }
        consumer
            .assign(&assignment)
            .expect("failed to assign the topic's partitions");
        consumer
    }

    /// The end offset of each non-empty partition of the test topic (the offset after its last
    /// record), for [`TestApp::wait_for_offsets`].
    pub(crate) async fn topic_ends(&self) -> HashMap<i32, i64> {
        use rdkafka::consumer::Consumer as _;
        let consumer = self.topic_reader("topic-ends");
        let (topic, partitions) = (self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || {
            let mut ends = HashMap::new();
            for partition in 0..i32::try_from(partitions).expect("partitions fit in i32") {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(30))
                    .expect("the partition's end offset");
                if high > 0 {
                    ends.insert(partition, high);
                }
            }
            ends
        })
        .await
        .expect("the watermark task panicked")
    }

    /// Every record of the test topic, every partition from its first offset to its end, as
    /// the bytes a copy of the log would hold: the key, each header's name and value, and the
    /// payload, one after the other.
    pub(crate) async fn whole_topic(&self) -> Vec<Vec<u8>> {
        use rdkafka::Message as _;
        use rdkafka::consumer::Consumer as _;
        use rdkafka::message::Headers as _;
        let consumer = self.topic_reader("whole-topic");
        let (topic, partitions) = (self.topic.clone(), self.partitions);
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(30);
            let mut ends = HashMap::new();
            for partition in 0..i32::try_from(partitions).expect("partitions fit in i32") {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .expect("the partition's end offset");
                if high > 0 {
                    ends.insert(partition, high);
                }
            }
            let mut records = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !ends.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "the topic was not read within 60 s"
                );
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message.expect("a readable message");
                let mut bytes = message.key().unwrap_or_default().to_vec();
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        bytes.extend_from_slice(header.key.as_bytes());
                        bytes.extend_from_slice(header.value.unwrap_or_default());
                    }
                }
                bytes.extend_from_slice(message.payload().unwrap_or_default());
                records.push(bytes);
                if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
                    ends.remove(&message.partition());
                }
            }
            records
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Runs `projector <args>` (its operator subcommands) against this test's database and
    /// topic, and returns (exit success, stdout, stderr).
    pub(crate) async fn projector_cli(&self, args: &[&str]) -> (bool, String, String) {
        self.projector_cli_with(args, &[]).await
    }

    /// [`TestApp::projector_cli`] with `extra` environment variables on top of the test's (e.g.
    /// another `DATABASE_URL`).
    pub(crate) async fn projector_cli_with(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> (bool, String, String) {
        let launcher = self.launcher.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            launcher.run_with("projector", &args, &extra)
        })
        .await
        .expect("the CLI task panicked");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Registers a user and returns it, asserting `201`.
    pub(crate) async fn register_user(&self, handle: &str, display_name: &str) -> TestUser {
        let resp = self.register(handle, display_name).await;
        resp.assert_status(201);
        TestUser {
            id: resp.str_field("user_id"),
            handle: resp.str_field("handle"),
            token: resp.str_field("token"),
            position: resp.str_field("position"),
        }
    }

    /// `POST /v1/posts`.
    pub(crate) async fn publish(&self, token: &str, body: &str) -> Resp {
        self.send(
            self.command(Method::POST, "/v1/posts")
                .bearer_auth(token)
                .json(&json!({ "body": body })),
        )
        .await
    }

    /// Publishes a post and returns it, asserting `202`.
    pub(crate) async fn publish_post(&self, author: &TestUser, body: &str) -> TestPost {
        let resp = self.publish(&author.token, body).await;
        resp.assert_status(202);
        TestPost {
            id: resp.str_field("post_id"),
            author: author.id.clone(),
            position: resp.str_field("position"),
        }
    }

    /// `DELETE /v1/posts/{post_id}`.
    pub(crate) async fn delete_post(
        &self,
        token: &str,
        post_id: &str,
        positions: &[String],
    ) -> Resp {
        let path = format!("/v1/posts/{post_id}");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PUT /v1/posts/{post_id}/like`.
    pub(crate) async fn like(&self, token: &str, post_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/posts/{post_id}/like");
        self.authed(Method::PUT, &path, token, positions).await
    }

    /// `DELETE /v1/posts/{post_id}/like`.
    pub(crate) async fn unlike(&self, token: &str, post_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/posts/{post_id}/like");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PUT /v1/users/me/following/{user_id}`.
    pub(crate) async fn follow(&self, token: &str, user_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/users/me/following/{user_id}");
        self.authed(Method::PUT, &path, token, positions).await
    }

    /// `DELETE /v1/users/me/following/{user_id}`.
    pub(crate) async fn unfollow(&self, token: &str, user_id: &str, positions: &[String]) -> Resp {
        let path = format!("/v1/users/me/following/{user_id}");
        self.authed(Method::DELETE, &path, token, positions).await
    }

    /// `PATCH /v1/users/me`.
    pub(crate) async fn update_profile(&self, token: &str, body: Value) -> Resp {
        self.send(
            self.command(Method::PATCH, "/v1/users/me")
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub(super) async fn authed(
        &self,
        method: Method,
        path: &str,
        token: &str,
        positions: &[String],
    ) -> Resp {
        let request = self.command(method, path).bearer_auth(token);
        self.send(with_positions(request, positions)).await
    }

    // ----- queries ------------------------------------------------------------------------

    /// `GET path` on the query API, waiting for `positions`.
    pub(crate) async fn get(&self, path: &str, positions: &[String]) -> Resp {
        self.send(with_positions(self.query(path), positions)).await
    }

    /// `GET /v1/users/{id}`.
    pub(crate) async fn get_user(&self, user_id: &str, positions: &[String]) -> Resp {
        self.get(&format!("/v1/users/{user_id}"), positions).await
    }

    /// `GET /v1/posts/{id}`.
    pub(crate) async fn get_post(&self, post_id: &str, positions: &[String]) -> Resp {
        self.get(&format!("/v1/posts/{post_id}"), positions).await
    }

    /// One page of a list endpoint.
    pub(crate) async fn get_page(
        &self,
        path: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
        positions: &[String],
    ) -> Resp {
        let mut request = self.query(path);
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit.to_string())]);
        }
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        self.send(with_positions(request, positions)).await
    }

    /// Every item of a list endpoint, following `next_cursor` with pages of `limit`.
    pub(crate) async fn collect_pages_with(
        &self,
        path: &str,
        limit: u32,
        positions: &[String],
    ) -> Vec<Value> {
        self.collect_pages_by(path, limit, |request| with_positions(request, positions))
            .await
    }

    /// Every item of `GET path` on the query API, each request shaped by `shape` (positions, a
    /// token), following `next_cursor` with pages of `limit`.
    async fn collect_pages_by(
        &self,
        path: &str,
        limit: u32,
        shape: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let mut request = self.query(path).query(&[("limit", limit.to_string())]);
            if let Some(cursor) = &cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            let resp = self.send(shape(request)).await;
            resp.assert_status(200);
            let page = resp.page_items();
            assert!(
                page.len() <= limit as usize,
                "GET {path} returned {} items for limit {limit}",
                page.len()
            );
            items.extend(page);
            match resp.next_cursor() {
                Some(next) => cursor = Some(next),
                None => return items,
            }
        }
        panic!("GET {path} never ended: over 10,000 pages");
    }

    /// Every item of a list endpoint, in pages of 100.
    pub(crate) async fn collect_pages(&self, path: &str, positions: &[String]) -> Vec<Value> {
        self.collect_pages_with(path, MAX_LIMIT, positions).await
    }

    /// Blocks until the read models reached every position in `positions` (within
    /// [`WAIT_DEADLINE`]). Retries only while the query API answers 503 `stale_read`.
    pub(crate) async fn wait_for(&self, positions: &[String]) {
        self.wait_for_within(positions, WAIT_DEADLINE).await;
    }

    /// [`TestApp::wait_for`] with an explicit deadline.
    pub(crate) async fn wait_for_within(&self, positions: &[String], deadline: Duration) {
        let started = Instant::now();
        for chunk in positions.chunks(POSITIONS_PER_REQUEST) {
            loop {
                let request = self.query("/v1/feed").query(&[("limit", "1")]);
                let resp = self.send(with_positions(request, chunk)).await;
                if resp.status == StatusCode::OK {
                    break;
                }
                assert!(
                    resp.status == StatusCode::SERVICE_UNAVAILABLE
                        && resp.code() == Some("stale_read"),
                    "waiting for positions: expected 200 or 503 stale_read, got {resp}"
                );
                assert!(
                    started.elapsed() < deadline,
                    "the read models did not reach {} positions within {}s (service logs: {})",
                    positions.len(),
                    deadline.as_secs(),
                    self.log_dir.display()
                );
                // The server already waited CHRONICLE_CONSISTENCY_WAIT_MS; just do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // ----- tokens -------------------------------------------------------------------------

    /// The claims of a token the command API issued.
    pub(crate) fn token_claims(token: &str) -> Value {
        let payload = token.split('.').nth(1).expect("a JWT has three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("the JWT payload is base64url");
        serde_json::from_slice(&bytes).expect("the JWT payload is JSON")
    }

    /// A token with `claims`, signed with the app's key as the command API signs.
    pub(crate) fn sign_token(&self, claims: &Value) -> String {
        self.token_key.sign(claims)
    }

    /// A token for `user`, valid for an hour, signed as the command API signed before sessions
    /// existed (no `sid`): it belongs to the user's legacy session, which only users registered
    /// before sessions have (the upgrade fixtures' users).
    pub(crate) fn token_for(&self, user: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign_token(&json!({ "sub": user, "iat": now, "exp": now + 3600 }))
    }

    /// A token for `user`, valid for an hour, in a session the test opens for it straight in
    /// the command API's table (as a login would, without the password).
    pub(crate) async fn session_token_for(&self, user: &str) -> String {
        let user_id: uuid::Uuid = user.parse().expect("a user id");
        let session = uuid::Uuid::new_v4();
        let now = chrono::Utc::now();
        self.db()
            .await
            .execute(
                "INSERT INTO command.sessions (session_id, user_id, expires_at)
                 VALUES ($1, $2, $3)",
                &[&session, &user_id, &(now + chrono::Duration::hours(1))],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot open a session for {user}: {e}"));
        let now = now.timestamp();
        self.sign_token(&json!({ "sub": user, "sid": session, "iat": now, "exp": now + 3600 }))
    }

    /// Every item of a private list endpoint of the query API (`GET path` with `token`),
    /// following `next_cursor` with pages of `limit`.
    pub(crate) async fn collect_private_pages(
        &self,
        path: &str,
        token: &str,
        limit: u32,
    ) -> Vec<Value> {
        self.collect_pages_by(path, limit, |request| request.bearer_auth(token))
            .await
    }

    // ----- Postgres -----------------------------------------------------------------------

    /// A connection to the test database.
    pub(crate) async fn db(&self) -> tokio_postgres::Client {
        connect_postgres(&self.database_url).await
    }

    pub(super) fn drop_database(&self) {
        let admin_url = self.env.admin_database_url.clone();
        let database = self.database.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = chronicle_infra::db::PgConfig::parse(&admin_url)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .await
                    .ok()
            })
        });
        let _ = worker.join();
    }

    /// Blocks until the active generation's stored offsets reach `ends` (per partition, the offset
    /// after the last message), within `deadline`.
    pub(crate) async fn wait_for_offsets(&self, ends: &HashMap<i32, i64>, deadline: Duration) {
        let db = self.db().await;
        let started = Instant::now();
        loop {
            let stored: HashMap<i32, i64> = db
                .query(
                    "SELECT o.partition, o.next_offset FROM projection.offsets o
                     JOIN projection.generations g ON g.name = o.generation AND g.state = 'active'
                     WHERE o.topic = $1",
                    &[&self.topic],
                )
                .await
                .expect("failed to read the stored offsets")
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let behind: Vec<(i32, i64)> = ends
                .iter()
                .filter(|(partition, end)| stored.get(partition).copied().unwrap_or(0) < **end)
                .map(|(partition, end)| {
                    (
                        *partition,
                        *end - stored.get(partition).copied().unwrap_or(0),
                    )
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "the projector did not reach the end of the log within {}s; behind: {behind:?} \
                 (service logs: {})",
                deadline.as_secs(),
                self.log_dir().display()
            );
            // Polling the stored offsets: what is waited for is a position, not a time.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
