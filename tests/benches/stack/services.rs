//! Chronicle's three services as child processes, and the population the measures act as.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chronicle_tests::bench::{
    CpuUse, Fixture, PARTITIONS, Result, run_all, spawn, wait_until_projected,
};
use chronicle_tests::workload::Rng;
use serde_json::{Value, json};

/// Follows each seeded user sends.
pub(crate) const FOLLOWS_PER_USER: usize = 10;

/// A seeded user: id, token, and their post.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) post: String,
}

/// The running services and an HTTP client for them.
pub(crate) struct Stack {
    pub(crate) http: reqwest::Client,
    /// The command API's base URL.
    pub(crate) command: String,
    /// The query API's base URL.
    pub(crate) query: String,
    services: Vec<(&'static str, Child)>,
    /// The command API's token signing key, removed at [`Stack::stop`].
    key_file: std::path::PathBuf,
}

/// A fresh Ed25519 private key in a PEM file, as `openssl genpkey -algorithm ed25519` writes it.
fn write_token_key(path: &std::path::Path, public_path: &std::path::Path) -> Result<()> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    std::fs::write(path, key.to_pkcs8_pem(Default::default())?.as_bytes())?;
    std::fs::write(
        public_path,
        key.verifying_key().to_public_key_pem(Default::default())?,
    )?;
    Ok(())
}

/// An HTTP client for the benchmark's load: enough idle connections for its clients.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `127.0.0.1:<a free port>`.
pub(crate) fn free_address() -> Result<String> {
    Ok(format!("127.0.0.1:{}", chronicle_tests::free_port()?))
}

/// Waits (up to a minute) until `GET {base}/healthz` answers 2xx.
pub(crate) async fn wait_healthy(http: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(format!("{base} did not come up within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Stack {
    /// Starts the projector (which migrates the read models), then the two APIs, with the
    /// projector's `fetch.wait.max.ms` set to `fetch_wait_ms`, and waits until both APIs answer.
    pub(crate) async fn start(fixture: &Fixture, fetch_wait_ms: u32) -> Result<Stack> {
        let command = free_address()?;
        let query = free_address()?;
        let key_file =
            std::env::temp_dir().join(format!("chronicle-bench-{}-token-key.pem", fixture.id));
        let public_key_file = key_file.with_extension("pub.pem");
        write_token_key(&key_file, &public_key_file)?;
        let vars = [
            ("KAFKA_BROKERS", fixture.brokers.clone()),
            ("CHRONICLE_TOPIC", fixture.topic.clone()),
            ("CHRONICLE_PARTITIONS", PARTITIONS.to_string()),
            ("DATABASE_URL", fixture.database_url.clone()),
            (
                "CHRONICLE_PROJECTOR_GROUP",
                format!("bench_{}.projector", fixture.id),
            ),
            ("CHRONICLE_PROJECTOR_ADDR", "127.0.0.1:0".to_owned()),
            ("CHRONICLE_COMMAND_ADDR", command.clone()),
            ("CHRONICLE_QUERY_ADDR", query.clone()),
            (
                "CHRONICLE_TOKEN_SIGNING_KEY_FILE",
                key_file.display().to_string(),
            ),
            (
                "CHRONICLE_TOKEN_VERIFY_KEY_FILES",
                public_key_file.display().to_string(),
            ),
            (
                "CHRONICLE_PROJECTOR_FETCH_WAIT_MS",
                fetch_wait_ms.to_string(),
            ),
            ("CHRONICLE_RATE_LIMIT_PER_ADDRESS", "0".to_owned()),
            ("CHRONICLE_RATE_LIMIT_PER_USER", "0".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let bin_dir = &fixture.bin_dir;
        let mut services = Vec::new();
        for name in ["projector", "command-api", "query-api"] {
            services.push((name, spawn(name, format!("{bin_dir}/{name}"), &[], &vars)?));
            if name == "projector" {
                // It migrates the read models the APIs read.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        let stack = Stack {
            http: http_client()?,
            command: format!("http://{command}"),
            query: format!("http://{query}"),
            services,
            key_file,
        };
        for base in [&stack.command, &stack.query] {
            wait_healthy(&stack.http, base).await?;
        }
        Ok(stack)
    }

    /// (name, pid) of each service.
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        self.services
            .iter()
            .map(|(name, child)| (*name, child.id()))
            .collect()
    }

    /// CPU used so far by each service, the processes in `also`, and the rest of the machine.
    pub(crate) fn cpu(&self, also: &[(&'static str, u32)]) -> CpuUse {
        let mut named = self.pids();
        named.extend_from_slice(also);
        CpuUse::now(&named)
    }

    /// Stops the services (SIGTERM, then waits); a benchmark that fails stops them too.
    pub(crate) fn stop(&mut self) {
        for (_, mut child) in self.services.drain(..) {
            stop_child(&mut child);
        }
        std::fs::remove_file(&self.key_file).ok();
        std::fs::remove_file(self.key_file.with_extension("pub.pem")).ok();
    }

    /// Sends a command; the JSON answer if it was a success.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.command));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Registers `count` users, then (once the read models know them) a post each and the
    /// follows.
    pub(crate) async fn seed(
        &self,
        db: &tokio_postgres::Client,
        count: usize,
    ) -> Result<Vec<User>> {
        let registered = run_all(count, 32, |i| async move {
            let answer = self
                .command(
                    reqwest::Method::POST,
                    "/v1/users",
                    None,
                    Some(json!({
                        "handle": format!("bench_{i}"),
                        "display_name": format!("Bench {i}"),
                        "password": format!("bench password {i}"),
                    })),
                )
                .await?;
            Some((
                answer["user_id"].as_str()?.to_owned(),
                answer["token"].as_str()?.to_owned(),
            ))
        })
        .await;
        let registered: Vec<(String, String)> = registered.into_iter().flatten().collect();
        if registered.len() != count {
            return Err(format!("registered {} of {count} users", registered.len()).into());
        }
        // Follows and likes name users and posts the command API looks up in the read models.
        wait_until_projected(db, i64::try_from(count)?).await?;
        let posts = run_all(count, 32, |i| {
            let token = registered[i].1.clone();
            async move {
                let answer = self
                    .command(
                        reqwest::Method::POST,
                        "/v1/posts",
                        Some(&token),
                        Some(json!({ "body": format!("hello from bench user {i}") })),
                    )
                    .await?;
                Some(answer["post_id"].as_str()?.to_owned())
            }
        })
        .await;
        let users: Vec<User> = registered
            .into_iter()
            .zip(posts)
            .map(|((id, token), post)| User {
                id,
                token,
                post: post.unwrap_or_default(),
            })
            .collect();
        // Each follows a few users, popular ones more often (squares skew towards low indexes).
        let users = &users;
        let follows = run_all(count * FOLLOWS_PER_USER, 32, |n| {
            let follower = &users[n / FOLLOWS_PER_USER];
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            let (a, b) = (rng.below(count), rng.below(count));
            let mut followee = &users[(a * b) / count];
            if followee.id == follower.id {
                // Following oneself is refused; follow the next user instead.
                followee = &users[(n / FOLLOWS_PER_USER + 1) % count];
            }
            async move {
                self.command(
                    reqwest::Method::PUT,
                    &format!("/v1/users/me/following/{}", followee.id),
                    Some(&follower.token),
                    None,
                )
                .await
            }
        })
        .await;
        let failed = follows.iter().filter(|f| f.is_none()).count();
        if failed > 0 || users.iter().any(|u| u.post.is_empty()) {
            return Err(format!("seeding failed ({failed} follows)").into());
        }
        Ok(users.clone())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a child process: SIGTERM, then waits for it.
pub(crate) fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
