//! Who is acting: HS256 JWTs issued at registration, checked on every other command.
//!
//! The acting user always comes from the token's `sub`, never from a request body. Only HS256
//! is accepted (so `alg: none` and algorithm confusion are refused), and `exp` is required.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chronicle_infra::Problem;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// Issues and checks tokens.
#[derive(Clone)]
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl Tokens {
    pub(crate) fn new(secret: &Secret, lifetime: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            lifetime,
        }
    }

    /// A token for `user`.
    pub(crate) fn issue(&self, user: Uuid) -> Result<String, Problem> {
        let now = chrono::Utc::now().timestamp();
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now.saturating_add(lifetime),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|err| Problem::internal(&err))
    }

    /// The user a token speaks for.
    fn verify(&self, token: &str) -> Result<Uuid, Problem> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| {
                tracing::debug!(reason = %err, "token refused");
                Problem::unauthorized("the bearer token is invalid or expired")
            })?;
        Uuid::parse_str(&data.claims.sub)
            .map_err(|_| Problem::unauthorized("the bearer token does not name a user"))
    }
}

/// The authenticated user making the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor(pub(crate) Uuid);

impl FromRequestParts<AppState> for Actor {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Actor, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let user = state.tokens.verify(token)?;
        if let Some(limiter) = &state.per_user {
            limiter.check(&user).inspect_err(|_| {
                metrics::counter!("http_rate_limited_total", "by" => "user").increment(1);
            })?;
        }
        Ok(Actor(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        Tokens::new(&secret.parse().expect("secret"), Duration::from_secs(60))
    }

    #[test]
    fn a_token_names_its_user() {
        let tokens = tokens("0123456789abcdef0123456789abcdef");
        let user = Uuid::now_v7();
        let token = tokens.issue(user).expect("token");
        assert_eq!(tokens.verify(&token).expect("valid"), user);
    }

    #[test]
    fn another_secret_is_refused() {
        let token = tokens("0123456789abcdef0123456789abcdef")
            .issue(Uuid::now_v7())
            .expect("token");
        let other = tokens("fedcba9876543210fedcba9876543210");
        assert_eq!(
            other.verify(&token).expect_err("forged").code(),
            "unauthorized"
        );
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64.encode(format!(
            r#"{{"sub":"{}","iat":0,"exp":99999999999}}"#,
            Uuid::now_v7()
        ));
        let token = format!("{header}.{claims}.");
        let tokens = tokens("0123456789abcdef0123456789abcdef");
        assert!(tokens.verify(&token).is_err());
    }

    #[test]
    fn short_secrets_and_debug_leaks_are_refused() {
        assert!("short".parse::<Secret>().is_err());
        let secret: Secret = "0123456789abcdef0123456789abcdef".parse().expect("secret");
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
