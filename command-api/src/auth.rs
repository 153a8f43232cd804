//! Who is acting: Ed25519-signed JWTs issued at registration and login, checked on every other
//! command together with their session.
//!
//! The acting user always comes from the token's `sub`, never from a request body. Signing and
//! checking are [`chronicle_infra::token`]'s and [`chronicle_infra::session`]'s; this module
//! holds the command API's keys: the private key it signs with, the public keys of retired
//! signing keys whose tokens are still valid, and the HS256 secret of the tokens issued before
//! Ed25519, while they last.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chronicle_infra::Problem;
use chronicle_infra::session::Sessions;
use chronicle_infra::token::{
    self, Bearer, Issued, Issuer, KeyError, PublicKey, SigningKey, Verifier,
};
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::AppState;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The smallest accepted secret, in bytes (the HS256 key size).
    pub const MIN_LEN: usize = 32;

    fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Secret, String> {
        if value.len() < Secret::MIN_LEN {
            return Err(format!("must be at least {} bytes long", Secret::MIN_LEN));
        }
        Ok(Secret(value.to_owned()))
    }
}

/// `CHRONICLE_TOKEN_SIGNING_KEY_FILE`, read when the configuration is parsed.
pub(crate) fn signing_key_file(path: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_file(&PathBuf::from(path))
}

/// The public keys of retired signing keys (`CHRONICLE_TOKEN_PUBLIC_KEY_FILES`).
#[derive(Clone, Debug, Default)]
pub struct RetiredKeys(Vec<PublicKey>);

/// `CHRONICLE_TOKEN_PUBLIC_KEY_FILES`, comma-separated paths (none when empty), read when the
/// configuration is parsed.
pub(crate) fn public_key_files(paths: &str) -> Result<RetiredKeys, KeyError> {
    token::public_key_files(paths).map(RetiredKeys)
}

/// The accepted tokens: what makes them (the signing key) and what checks them (the public
/// keys, then the sessions table).
pub(crate) struct Tokens {
    issuer: Issuer,
    sessions: Sessions,
}

impl Tokens {
    /// Issues with `signing`; accepts its tokens, those of the `retired` keys, and, given the
    /// `legacy` secret, the HS256 tokens made before Ed25519, while their session in `pool`'s
    /// database is live.
    pub(crate) fn new(
        signing: &SigningKey,
        retired: &RetiredKeys,
        legacy: Option<&Secret>,
        lifetime: Duration,
        pool: &Pool,
    ) -> Tokens {
        let accepted = std::iter::once(signing.public_key()).chain(&retired.0);
        Tokens {
            issuer: Issuer::new(signing.clone(), lifetime),
            sessions: Sessions::new(Verifier::new(accepted, legacy.map(Secret::expose)), pool),
        }
    }

    /// A token for `user` in `session`.
    pub(crate) fn issue(&self, user: Uuid, session: Uuid) -> Result<Issued, Problem> {
        self.issuer.issue(user, session)
    }
}

/// The authenticated user making the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor(pub(crate) Uuid);

/// The authenticated user making the request, with the session of their token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session(pub(crate) Bearer);

impl FromRequestParts<AppState> for Session {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, Problem> {
        let bearer = state
            .tokens
            .sessions
            .authenticate(token::bearer(&parts.headers)?)
            .await?;
        if let Some(limiter) = &state.per_user {
            limiter.check(&bearer.user).inspect_err(|_| {
                metrics::counter!("http_rate_limited_total", "by" => "user").increment(1);
            })?;
        }
        Ok(Session(bearer))
    }
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Actor, Problem> {
        let Session(bearer) = Session::from_request_parts(parts, state).await?;
        Ok(Actor(bearer.user))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh Ed25519 private key in a PEM file, as `openssl genpkey` writes it.
    pub(crate) fn key_file() -> PathBuf {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let seed: [u8; 32] = *Uuid::new_v4()
            .as_bytes()
            .repeat(2)
            .first_chunk()
            .expect("32");
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(Default::default())
            .expect("pem");
        let path = std::env::temp_dir().join(format!("chronicle-unit-key-{}.pem", Uuid::now_v7()));
        std::fs::write(&path, pem.as_bytes()).expect("a key file");
        path
    }

    #[test]
    fn short_secrets_and_debug_leaks_are_refused() {
        assert!("short".parse::<Secret>().is_err());
        let secret: Secret = "0123456789abcdef0123456789abcdef".parse().expect("secret");
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
