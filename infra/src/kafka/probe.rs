//! Reaching the brokers before anything else: the first contact with Chronicle's client settings
//! is where a wrong CA, a listener that speaks no TLS or wrong SASL credentials show, and they
//! should show as an error that says so, at once.
//!
//! The admin client cannot tell: rdkafka never polls its main queue, so the error events that
//! say why a broker connection failed go nowhere, and its requests just time out. A producer's
//! `poll` hands them to its context, which is why the probe is a (never producing) producer.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// Waits (until `deadline`) for a broker at `brokers` to answer a metadata request for `topic`
/// made with `config`. A broker that refuses the TLS handshake or the credentials fails this at
/// once, with librdkafka's reason: waiting would not change it.
pub(super) async fn await_brokers(
    config: ClientConfig,
    brokers: &str,
    topic: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let deadline = deadline.into_std();
    tokio::task::spawn_blocking(move || {
        let probe: BaseProducer<Watchful> = config
            .create_with_context(Watchful::default())
            .context("failed to create a Kafka client")?;
        loop {
            let answered = probe
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1));
            // Hands the attempt's error events to `Watchful::error`.
            probe.poll(Duration::from_millis(100));
            if let Some(refusal) = probe.context().refusal() {
                bail!("the Kafka broker at {brokers} refused the connection: {refusal}");
            }
            match answered {
                Ok(_) => return Ok(()),
                Err(err) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %err, %brokers, "Kafka not reachable yet, retrying");
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("the Kafka broker at {brokers} is not reachable")
                    });
                }
            }
        }
    })
    .await?
}

/// A client context that logs librdkafka's errors as the default one does, and keeps the first
/// that says the broker refused the connection itself: the TLS handshake failed (an untrusted
/// certificate, a listener that speaks no TLS) or the SASL credentials were wrong.
#[derive(Default)]
struct Watchful {
    heard: Mutex<Heard>,
}

#[derive(Default)]
struct Heard {
    /// The last error, to log each once: rdkafka 0.39 hands a producer's error events to the
    /// context twice.
    last: Option<String>,
    refusal: Option<String>,
}

impl Watchful {
    fn heard(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refusal(&self) -> Option<String> {
        self.heard().refusal.clone()
    }
}

impl ClientContext for Watchful {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut heard = self.heard();
        if heard.last.as_deref() == Some(reason) {
            return;
        }
        heard.last = Some(reason.to_owned());
        tracing::error!(error = %error, "librdkafka: {reason}");
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        ) {
            heard.refusal.get_or_insert_with(|| reason.to_owned());
        }
    }
}

impl ProducerContext for Watchful {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_broker_that_speaks_no_tls_is_a_refusal_not_a_wait() {
        // A plain TCP listener that answers a TLS hello with garbage.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = listener.local_addr().expect("an address").to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        });
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &address)
            .set("security.protocol", "SSL");
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let err = await_brokers(config, &address, "unit.events", deadline)
            .await
            .expect_err("no TLS there");
        assert!(
            err.to_string().contains("refused the connection: ") && err.to_string().contains("SSL"),
            "{err:#}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_broker_that_is_not_there_is_waited_for_until_the_deadline() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &address);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let err = await_brokers(config, &address, "unit.events", deadline)
            .await
            .expect_err("nobody listens");
        assert!(err.to_string().ends_with("is not reachable"), "{err:#}");
    }
}
