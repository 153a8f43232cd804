//! TLS to PostgreSQL as libpq's `sslmode` describes it, with rustls.
//!
//! | `sslmode` | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (default) | if the server offers TLS | no | no |
//! | `require` | yes | no (but as `verify-ca` when `sslrootcert` is given, as in libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The certificate is checked against `sslrootcert` (a PEM file of CA certificates) or, without
//! one, against the system's store of CA certificates (`sslrootcert=system`, libpq 16's name for
//! that, asks for it explicitly and, as there, implies `verify-full`). libpq would instead read
//! `~/.postgresql/root.crt`; a managed PostgreSQL whose CA is public needs no file here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{RootCertStore, SignatureScheme};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`: whether the connection is encrypted, and how much of the server's
/// certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Encrypted if the server offers it, the certificate unchecked (libpq's default).
    Prefer,
    /// Encrypted, the certificate unchecked (unless `sslrootcert` is given: then as `VerifyCa`).
    Require,
    /// Encrypted, the certificate issued by a trusted CA, any host name.
    VerifyCa,
    /// Encrypted, the certificate issued by a trusted CA for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// libpq's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does about TLS for this mode; the certificate checks are rustls's.
    pub(super) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The system's store (`/etc/ssl/certs` and the like).
    System,
    /// A PEM file (`sslrootcert=<file>`).
    File(PathBuf),
}

/// Why TLS cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `sslmode` has a value libpq does not know, or one this client cannot honour.
    #[error("sslmode={0} is not supported: use disable, prefer, require, verify-ca or verify-full")]
    Mode(String),
    /// `sslrootcert=system` with a mode weaker than `verify-full` (refused as libpq refuses it).
    #[error("sslrootcert=system needs sslmode=verify-full (as in libpq), not {0}")]
    SystemNeedsVerifyFull(&'static str),
    /// The CA file cannot be read, or holds no certificate.
    #[error("sslrootcert={}: {reason}", path.display())]
    RootCertFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system's store holds no CA certificate.
    #[error("no CA certificates in the system's store; name a file with sslrootcert")]
    NoSystemRoots,
    /// rustls refuses the configuration (not expected with its own defaults).
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads `sslmode` (libpq's default `prefer` when absent) and `sslrootcert` (`system`
/// included).
pub(super) fn settings(
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
) -> Result<(SslMode, Option<RootCerts>), TlsError> {
    let roots = sslrootcert.map(|value| match value {
        "system" => RootCerts::System,
        path => RootCerts::File(PathBuf::from(path)),
    });
    let mode = match sslmode {
        None if roots == Some(RootCerts::System) => SslMode::VerifyFull,
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        // `allow` (plain text first, TLS if refused) is libpq's, but tokio-postgres never falls
        // back from plain text to TLS; the other values are not libpq's.
        Some(other) => return Err(TlsError::Mode(other.to_owned())),
    };
    if roots == Some(RootCerts::System) && mode != SslMode::VerifyFull {
        return Err(TlsError::SystemNeedsVerifyFull(mode.as_str()));
    }
    Ok((mode, roots))
}

/// How much of the server's certificate a connection checks.
enum Check {
    Nothing,
    Chain(RootCertStore),
    ChainAndName(RootCertStore),
}

/// The TLS connector for `mode`, its CA certificates loaded now, so that a missing file stops
/// the service at start-up rather than at its first connection.
pub(super) fn connector(mode: SslMode, roots: Option<&RootCerts>) -> Result<PgTls, TlsError> {
    let check = match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
        (SslMode::Require | SslMode::VerifyCa, roots) => Check::Chain(load_roots(roots)?),
        (SslMode::VerifyFull, roots) => Check::ChainAndName(load_roots(roots)?),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let nameless = |roots| Arc::new(NamelessCheck { roots, algorithms });
    let mut config = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(nameless(None))
            .with_no_client_auth(),
        Check::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(nameless(Some(roots)))
            .with_no_client_auth(),
        Check::ChainAndName(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    // What libpq 17 sends; PostgreSQL 17 requires it of direct TLS (`sslnegotiation=direct`).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(PgTls(MakeRustlsConnect::new(config)))
}

fn load_roots(roots: Option<&RootCerts>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Some(RootCerts::File(path)) => {
            for cert in read_certificates(path)? {
                store.add(cert).map_err(|err| TlsError::RootCertFile {
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {err}"),
                })?;
            }
        }
        None | Some(RootCerts::System) => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(error = %error, "skipped part of the system's CA store");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::RootCertFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| failed(format!("cannot read it: {err}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| failed(format!("not PEM certificates: {err}")))?;
    if certs.is_empty() {
        return Err(failed("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// The TLS connector of every Chronicle connection to PostgreSQL: rustls, configured for the
/// `sslmode` asked for. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgTls(MakeRustlsConnect);

/// The stream of a connection Chronicle makes to PostgreSQL (TLS or not, as negotiated).
pub type PgTlsStream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

impl MakeTlsConnect<tokio_postgres::Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        // tokio-postgres asks with an empty name for a Unix socket, over which PostgreSQL speaks
        // no TLS (tokio-postgres then never starts a handshake); rustls wants a valid name, so
        // any will do for a connector that is never used.
        let hostname = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(&mut self.0, hostname)
    }
}

/// The certificate checks short of `verify-full` (which is rustls's own, with names).
///
/// Without roots (`prefer`, and `require` without a CA) the traffic is encrypted against
/// eavesdroppers, not against someone in the middle, exactly as libpq does it. With roots
/// (`verify-ca`, and `require` with a CA) the certificate must chain to a trusted CA and be
/// valid now; its names are not looked at. Either way the handshake's signatures are checked,
/// against whatever certificate the server sent.
#[derive(Debug)]
struct NamelessCheck {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NamelessCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls error behind a failed connection, if TLS is why it failed (a certificate refused,
/// a handshake gone wrong): a setting to fix, not an outage to wait out.
pub(super) fn rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's `source()` skips the error it wraps; `get_ref()` reaches it.
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate it issued for `names`.
    struct Pki {
        ca: CertificateDer<'static>,
        server: CertificateDer<'static>,
    }

    fn pki(ca_name: &str, names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let server = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("the server certificate");
        Pki {
            ca: ca.der().clone(),
            server: server.der().clone(),
        }
    }

    fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
        let mut store = RootCertStore::empty();
        store.add(ca.clone()).expect("a CA");
        store
    }

    fn algorithms() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    fn name(host: &str) -> ServerName<'static> {
        ServerName::try_from(host.to_owned()).expect("a server name")
    }

    #[test]
    fn verify_ca_checks_the_issuer_but_not_the_name() {
        let trusted = pki("Trusted CA", &["db.example"]);
        let stranger = pki("Stranger CA", &["db.example"]);
        let verifier = NamelessCheck {
            roots: Some(roots(&trusted.ca)),
            algorithms: algorithms(),
        };
        let now = UnixTime::now();
        for host in ["db.example", "elsewhere.example", "127.0.0.1"] {
            assert!(
                verifier
                    .verify_server_cert(&trusted.server, &[], &name(host), &[], now)
                    .is_ok(),
                "{host}"
            );
        }
        let refused =
            verifier.verify_server_cert(&stranger.server, &[], &name("db.example"), &[], now);
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn modes_map_as_libpq_documents_them() {
        let ok = |mode, root| settings(mode, root).expect("valid");
        assert_eq!(ok(None, None), (SslMode::Prefer, None));
        assert_eq!(ok(Some("disable"), None).0, SslMode::Disable);
        assert_eq!(ok(Some("verify-ca"), Some("/ca.pem")).0, SslMode::VerifyCa);
        assert_eq!(
            ok(None, Some("system")),
            (SslMode::VerifyFull, Some(RootCerts::System))
        );
        assert!(matches!(
            settings(Some("require"), Some("system")),
            Err(TlsError::SystemNeedsVerifyFull("require"))
        ));
        let refused = settings(Some("allow"), None).expect_err("allow");
        assert!(
            refused
                .to_string()
                .starts_with("sslmode=allow is not supported")
        );
        assert!(settings(Some("verify_full"), None).is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_at_once() {
        let missing = connector(
            SslMode::VerifyFull,
            Some(&RootCerts::File("/no/such/ca.pem".into())),
        )
        .err()
        .expect("missing file");
        assert!(
            missing
                .to_string()
                .starts_with("sslrootcert=/no/such/ca.pem: cannot read it"),
            "{missing}"
        );
        let empty =
            std::env::temp_dir().join(format!("chronicle-empty-ca-{}.pem", uuid::Uuid::now_v7()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let refused = connector(SslMode::VerifyCa, Some(&RootCerts::File(empty.clone())))
            .err()
            .expect("no certificate");
        let _ = std::fs::remove_file(&empty);
        assert!(
            refused.to_string().ends_with("holds no PEM certificate"),
            "{refused}"
        );
    }

    #[test]
    fn modes_without_verification_need_no_ca() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            assert!(connector(mode, None).is_ok(), "{mode:?}");
        }
    }
}
