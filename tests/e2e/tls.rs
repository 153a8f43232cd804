//! Chronicle against a Kafka and a PostgreSQL that want TLS, as managed ones do: a private
//! broker with an `SSL` and a `SASL_SSL` (SCRAM-SHA-256) listener, and a private PostgreSQL that
//! refuses any TCP connection without TLS and a password. Certificates are made for each test
//! (no key is checked in), for 127.0.0.1, by a CA of the test's own; a second CA nobody trusts
//! stands for a wrong `ssl.ca.location` or `sslrootcert`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chronicle_infra::db::PgConfig;
use futures_util::FutureExt as _;

use crate::broker::KafkaCluster;
use crate::harness::{TestApp, TestAppBuilder, scratch_dir};
use crate::postgres::PrivatePostgres;

/// The SCRAM user the private broker knows.
const KAFKA_USER: &str = "chronicle";

/// A CA and the files a test hands out: the CA's certificate, and a server certificate and key
/// it issued for 127.0.0.1.
struct Pki {
    /// The CA certificate (PEM), what clients trust.
    ca: PathBuf,
    /// The server's certificate chain (PEM).
    cert_pem: String,
    /// The server's private key (PKCS#8 PEM).
    key_pem: String,
    /// Key and chain in one file, as Kafka's PEM key store wants them.
    keystore: PathBuf,
}

impl Pki {
    /// A CA named `name` and a certificate it issued for `hosts`, written under `dir`.
    fn new(dir: &Path, name: &str, hosts: &[&str]) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("the certificates' directory");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("the CA");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let mut params = rcgen::CertificateParams::new(
            hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        )
        .expect("server parameters");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            hosts.first().copied().unwrap_or("server"),
        );
        let cert = params.signed_by(&key, &ca).expect("the server certificate");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("ca.pem");
        let keystore = dir.join("server-keystore.pem");
        std::fs::write(&keystore, format!("{key_pem}{cert_pem}")).expect("the key store");
        Pki {
            ca: ca_path,
            cert_pem,
            key_pem,
            keystore,
        }
    }
}

/// A random alphanumeric secret (a UUIDv7's 74 random bits are plenty for a test).
fn secret() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A directory for one test's certificates and servers, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = scratch_dir().join(format!("tls-{test}-{}", secret()));
        std::fs::create_dir_all(&dir).expect("the test's scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A broker with `SSL` and `SASL_SSL` listeners whose certificate `pki` issued; the SASL one
/// knows [`KAFKA_USER`] with `password` (SCRAM-SHA-256). PLAINTEXT stays, for the harness.
fn tls_broker(root: &Path, pki: &Pki, password: &str) -> KafkaCluster {
    let keystore = pki.keystore.display().to_string();
    let mut builder = KafkaCluster::builder()
        .listener("SSL")
        .listener("SASL_SSL")
        .format_arg("--add-scram")
        .format_arg(&format!(
            "SCRAM-SHA-256=[name={KAFKA_USER},password={password}]"
        ))
        .property(
            "listener.name.sasl_ssl.sasl.enabled.mechanisms",
            "SCRAM-SHA-256",
        )
        .property(
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        );
    for listener in ["ssl", "sasl_ssl"] {
        builder = builder
            .property(
                &format!("listener.name.{listener}.ssl.keystore.type"),
                "PEM",
            )
            .property(
                &format!("listener.name.{listener}.ssl.keystore.location"),
                &keystore,
            );
    }
    builder.start(root, "kafka")
}

/// The services' settings for the broker's SASL_SSL listener.
fn sasl_ssl(
    builder: TestAppBuilder,
    kafka: &KafkaCluster,
    ca: &Path,
    password: &str,
) -> TestAppBuilder {
    builder
        // The harness creates the test topic over PLAINTEXT; the services get the TLS listener.
        .broker(&kafka.address())
        .env("KAFKA_BROKERS", &kafka.listener_address("SASL_SSL"))
        .env("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        .env("CHRONICLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
        .env("CHRONICLE_KAFKA_SASL_USERNAME", KAFKA_USER)
        .env("CHRONICLE_KAFKA_SASL_PASSWORD", password)
        .env("CHRONICLE_KAFKA_SSL_CA_LOCATION", &ca.display().to_string())
}

/// A URL of `server`'s `postgres` database as `postgres` with `password`, over TLS.
fn pg_url(server: &PrivatePostgres, host: &str, password: &str, tls: &str) -> String {
    format!(
        "postgres://postgres:{password}@{host}:{}/postgres?{tls}",
        server.port()
    )
}

/// Starts Chronicle expecting it not to: returns what the harness said about the failure (it
/// quotes the service's output) and how long that took.
async fn failed_start(builder: TestAppBuilder) -> (String, Duration) {
    let started = Instant::now();
    let outcome = std::panic::AssertUnwindSafe(builder.spawn())
        .catch_unwind()
        .await;
    let Err(panic) = outcome else {
        panic!("Chronicle started although its settings are wrong");
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    (message, started.elapsed())
}

/// Every line every service of `app` wrote.
fn service_logs(app: &TestApp) -> String {
    let mut logs = String::new();
    for entry in std::fs::read_dir(app.log_dir()).expect("the log directory") {
        let path = entry.expect("a log file").path();
        logs.push_str(&std::fs::read_to_string(&path).expect("a readable log"));
    }
    logs
}

/// Connects with `url` as the services would, within 15 s.
async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let config = PgConfig::parse(url).map_err(|e| format!("{e:#}"))?;
    let (client, connection) = tokio::time::timeout(Duration::from_secs(15), config.connect())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| {
            chronicle_infra::db::configuration_error(&e).unwrap_or_else(|| format!("{e}"))
        })?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn chronicle_works_over_sasl_ssl_and_verify_full_postgres_and_shows_no_password() {
    // Arrange: a broker and a PostgreSQL that both want TLS, and passwords for each.
    let scratch = Scratch::new("sasl");
    let pki = Pki::new(&scratch.0, "trusted", &["127.0.0.1"]);
    let (kafka_password, pg_password) = (secret(), secret());
    let kafka = tls_broker(&scratch.0, &pki, &kafka_password);
    let postgres = PrivatePostgres::start_with_tls(
        &scratch.0,
        "postgres",
        &pki.cert_pem,
        &pki.key_pem,
        &pg_password,
    );
    let tls = format!("sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let admin_url = pg_url(&postgres, "127.0.0.1", &pg_password, &tls);

    // Act: Chronicle over SASL_SSL and verify-full, logging at debug level, librdkafka's
    // security and configuration debugging included.
    let app = sasl_ssl(TestApp::builder(), &kafka, &pki.ca, &kafka_password)
        .database_server(&admin_url)
        .env("RUST_LOG", "debug")
        .env("CHRONICLE_KAFKA_DEBUG", "security,conf")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let post = app.publish_post(&alice, "over TLS").await;

    // Assert: the events went through the broker and the read models through TLS.
    let user = app
        .get_user(&alice.id, std::slice::from_ref(&alice.position))
        .await;
    user.assert_status(200);
    assert_eq!(user.str_field("handle"), "alice");
    app.get_post(&post.id, std::slice::from_ref(&post.position))
        .await
        .assert_status(200);
    // The operator's subcommands make their own Kafka clients and connections.
    let (ok, stdout, stderr) = app.projector_cli(&["status"]).await;
    assert!(ok, "projector status failed: {stderr}");
    let (ok, events, stderr) = app.projector_cli(&["events"]).await;
    assert!(ok, "projector events failed: {stderr}");
    assert!(
        events.contains(&post.id),
        "no post in `projector events`: {events}"
    );
    app.assert_services_alive();

    let logs = service_logs(&app);
    assert!(
        logs.contains("Kafka client properties passed through"),
        "the pass-through is not logged: {}",
        app.log_dir().display()
    );
    for (what, password) in [("Kafka", &kafka_password), ("PostgreSQL", &pg_password)] {
        for text in [&logs, &stdout, &stderr] {
            if let Some(line) = text.lines().find(|line| line.contains(password.as_str())) {
                panic!("the {what} password appears in a log line: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_kafka_password_or_ca_stops_chronicle_at_start_and_a_properties_file_works() {
    // Arrange: a broker with TLS listeners, a plain PostgreSQL of the test's own (a failed start
    // leaves its database behind), and a CA that issued nothing the broker shows.
    let scratch = Scratch::new("kafka");
    let pki = Pki::new(&scratch.0, "trusted", &["127.0.0.1"]);
    let stranger = Pki::new(&scratch.0, "stranger", &["127.0.0.1"]);
    let password = secret();
    let kafka = tls_broker(&scratch.0, &pki, &password);
    let postgres = PrivatePostgres::start(&scratch.0, "postgres");
    let on_our_postgres = || TestApp::builder().database_server(&postgres.admin_url());

    // Act and assert: a wrong password, then an untrusted CA.
    let wrong = format!("{password}-wrong");
    let (message, took) = failed_start(sasl_ssl(on_our_postgres(), &kafka, &pki.ca, &wrong)).await;
    assert!(
        message.contains("exited before listening"),
        "a wrong SASL password did not stop the service: {message}"
    );
    assert!(
        message.contains("Authentication failed"),
        "the service does not say the broker refused the credentials: {message}"
    );
    assert!(
        !message.contains(&password),
        "the password is in the output: {message}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?} to fail");

    let (message, took) =
        failed_start(sasl_ssl(on_our_postgres(), &kafka, &stranger.ca, &password)).await;
    assert!(
        message.contains("exited before listening")
            && message.contains("certificate verify failed"),
        "an untrusted broker certificate did not stop the service loudly: {message}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?} to fail");

    // A pass-through of a setting Chronicle owns is refused before anything starts.
    let (message, _) = failed_start(
        sasl_ssl(on_our_postgres(), &kafka, &pki.ca, &password)
            .env("CHRONICLE_KAFKA_ENABLE_IDEMPOTENCE", "false"),
    )
    .await;
    assert!(
        message.contains(
            "CHRONICLE_KAFKA_ENABLE_IDEMPOTENCE: `enable.idempotence` cannot be passed through"
        ),
        "{message}"
    );

    // The SSL listener, configured by a properties file instead of variables.
    let file = scratch.0.join("kafka.properties");
    std::fs::write(
        &file,
        format!(
            "# the broker's TLS listener\nsecurity.protocol=SSL\nssl.ca.location={}\n",
            pki.ca.display()
        ),
    )
    .expect("the properties file");
    let app = on_our_postgres()
        .broker(&kafka.address())
        .env("KAFKA_BROKERS", &kafka.listener_address("SSL"))
        .env(
            "CHRONICLE_KAFKA_PROPERTIES_FILE",
            &file.display().to_string(),
        )
        .spawn()
        .await;
    let bob = app.register_user("bob", "Bob").await;
    app.get_user(&bob.id, std::slice::from_ref(&bob.position))
        .await
        .assert_status(200);
    app.assert_services_alive();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_is_checked_as_libpq_sslmode_says() {
    // Arrange: a PostgreSQL with a certificate for 127.0.0.1 only, refusing TCP without TLS.
    let scratch = Scratch::new("postgres");
    let pki = Pki::new(&scratch.0, "trusted", &["127.0.0.1"]);
    let stranger = Pki::new(&scratch.0, "stranger", &["127.0.0.1"]);
    let password = secret();
    let server = PrivatePostgres::start_with_tls(
        &scratch.0,
        "postgres",
        &pki.cert_pem,
        &pki.key_pem,
        &password,
    );
    let ca = pki.ca.display().to_string();
    let untrusted = stranger.ca.display().to_string();
    // `localhost` (reached at 127.0.0.1) is a name the certificate does not carry.
    let url = |host: &str, tls: &str| pg_url(&server, host, &password, tls);
    let wrong_name = |tls: &str| url("localhost", &format!("hostaddr=127.0.0.1&{tls}"));

    // Act and assert, straight through the connector every service uses.
    let accepted = [
        url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        wrong_name(&format!("sslmode=verify-ca&sslrootcert={ca}")),
        url("127.0.0.1", "sslmode=require"),
        url("127.0.0.1", "sslmode=prefer"),
    ];
    for url in &accepted {
        let client = connect(url).await.unwrap_or_else(|e| panic!("{e}: {url}"));
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(encrypted, "not encrypted: {url}");
    }
    let refused = [
        (
            wrong_name(&format!("sslmode=verify-full&sslrootcert={ca}")),
            "not valid for name",
        ),
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={untrusted}"),
            ),
            "UnknownIssuer",
        ),
        // libpq: `require` with a CA file checks the chain as `verify-ca` does.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=require&sslrootcert={untrusted}"),
            ),
            "UnknownIssuer",
        ),
        // The server refuses plain text, so this proves the others really used TLS.
        (url("127.0.0.1", "sslmode=disable"), "no encryption"),
    ];
    for (url, why) in &refused {
        let err = connect(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("connected: {url}"));
        assert!(err.contains(why), "{url}: expected {why:?}, got {err}");
        assert!(!err.contains(&password), "{err}");
    }

    // A service given an untrusted CA stops at once and says why (the harness's own
    // connection, which creates the test database, uses the right one).
    let (message, took) = failed_start(
        TestApp::builder()
            .database_server(&url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ))
            .env(
                "DATABASE_URL",
                &url(
                    "127.0.0.1",
                    &format!("sslmode=verify-full&sslrootcert={untrusted}"),
                ),
            ),
    )
    .await;
    assert!(
        message.contains("exited before listening")
            && message.contains("TLS with the database failed"),
        "an untrusted database certificate did not stop the service loudly: {message}"
    );
    assert!(
        !message.contains(&password),
        "the password is in the output: {message}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?} to fail");
}
