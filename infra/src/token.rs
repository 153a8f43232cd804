//! Bearer tokens: Ed25519-signed JWTs (`alg: EdDSA`) whose `sub` is the acting user and whose
//! `sid` names the session they belong to.
//!
//! A signature proves who issued a token, not that it still holds: a session ends when its user
//! logs out, changes their password or is erased, and its tokens with it. So every service that
//! accepts a token also asks [`crate::session`] whether its session is live. Tokens issued
//! before sessions existed have no `sid`; they belong to their user's *legacy session*, whose
//! id is the user's id.
//!
//! The command API holds the private key and issues tokens; anything that only checks them (the
//! query API) holds public keys alone, so it cannot make a token. Every token names its key in
//! the header (`kid`: the key's RFC 7638 JWK thumbprint), which is how a verifier holding the
//! old and the new public key during a rotation picks the right one.
//!
//! Keys are read from PEM files, the formats `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` write: a PKCS#8 private key, an SPKI public key.
//!
//! Only `EdDSA` is accepted, so `alg: none` and algorithm confusion are refused; `exp` and `sub`
//! are required. A verifier may also accept the HS256 tokens issued before Ed25519, until they
//! expire ([`Verifier::new`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

use crate::Problem;

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The session; absent in tokens issued before sessions existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    iat: i64,
    exp: i64,
}

/// Who a valid token speaks for, and in which session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bearer {
    /// The acting user (`sub`).
    pub user: Uuid,
    /// The session (`sid`), or the user's id for a token issued before sessions existed.
    pub session: Uuid,
}

/// A token just issued.
pub struct Issued {
    /// The token itself (a secret: never log it).
    pub token: String,
    /// When it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An Ed25519 public key, with the id tokens signed by its private key carry.
#[derive(Clone)]
pub struct PublicKey {
    kid: String,
    raw: [u8; 32],
}

impl PublicKey {
    fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> PublicKey {
        let raw = key.to_bytes();
        // RFC 7638: the SHA-256 of the JWK's required members, in lexicographic order, no spaces.
        let jwk = format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(raw)
        );
        PublicKey {
            kid: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(jwk.as_bytes())),
            raw,
        }
    }

    /// Reads an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_file(path: &Path) -> Result<PublicKey, KeyError> {
        let pem = read_pem(path)?;
        if pem.contains("PRIVATE KEY-----") {
            return Err(KeyError::new(
                path,
                "holds a private key; give this service the public key only \
                 (`openssl pkey -in <private.pem> -pubout`)",
            ));
        }
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
            .map_err(|err| KeyError::new(path, format!("is not an Ed25519 public key ({err})")))?;
        Ok(PublicKey::from_verifying_key(&key))
    }

    /// The key id tokens signed with this key carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).finish()
    }
}

/// An Ed25519 private key, which never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct SigningKey {
    public: PublicKey,
    encoding: EncodingKey,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let pem = zeroize::Zeroizing::new(read_pem(path)?);
        SigningKey::from_pem(&pem).map_err(|reason| KeyError::new(path, reason))
    }

    fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|err| format!("is not an Ed25519 private key in PKCS#8 PEM ({err})"))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|err| format!("cannot be encoded again ({err})"))?;
        Ok(SigningKey {
            public: PublicKey::from_verifying_key(&key.verifying_key()),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .field("private", &"[redacted]")
            .finish()
    }
}

/// A key file that cannot be used, and why (never its contents).
#[derive(Debug, thiserror::Error)]
#[error("the key file {} {reason}", path.display())]
pub struct KeyError {
    path: PathBuf,
    reason: String,
}

impl KeyError {
    fn new(path: &Path, reason: impl Into<String>) -> KeyError {
        KeyError {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

fn read_pem(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path)
        .map_err(|err| KeyError::new(path, format!("cannot be read ({err})")))
}

/// Issues tokens with one private key.
#[derive(Clone, Debug)]
pub struct Issuer {
    key: SigningKey,
    lifetime: Duration,
}

impl Issuer {
    /// Tokens signed with `key`, valid for `lifetime`.
    pub fn new(key: SigningKey, lifetime: Duration) -> Issuer {
        Issuer { key, lifetime }
    }

    /// A token for `user` in `session`.
    pub fn issue(&self, user: Uuid, session: Uuid) -> Result<Issued, Problem> {
        let now = chrono::Utc::now().timestamp();
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.to_string(),
            sid: Some(session.to_string()),
            iat: now,
            exp: now.saturating_add(lifetime),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.public.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|err| Problem::internal(&err))?;
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| Problem::internal(&"a token lifetime past the year 262143"))?;
        Ok(Issued { token, expires_at })
    }
}

/// Checks tokens against a set of public keys.
#[derive(Clone)]
pub struct Verifier(Arc<Keys>);

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    eddsa: Validation,
    legacy: Option<(DecodingKey, Validation)>,
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

impl Verifier {
    /// Accepts tokens signed by the private key of any of `keys` and, when `legacy_hs256` is
    /// given, the HS256 tokens Chronicle made with that secret before Ed25519. The latter is for
    /// an upgrade only: such tokens pass until they expire, and none are issued any more.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = &'a PublicKey>,
        legacy_hs256: Option<&[u8]>,
    ) -> Verifier {
        let by_kid = keys
            .into_iter()
            .map(|key| (key.kid.clone(), DecodingKey::from_ed_der(&key.raw)))
            .collect();
        Verifier(Arc::new(Keys {
            by_kid,
            eddsa: validation(Algorithm::EdDSA),
            legacy: legacy_hs256.map(|secret| {
                (
                    DecodingKey::from_secret(secret),
                    validation(Algorithm::HS256),
                )
            }),
        }))
    }

    /// Who a token speaks for, if its signature and lifetime hold (not whether its session is
    /// live: [`crate::session`] asks that).
    pub fn verify(&self, token: &str) -> Result<Bearer, Problem> {
        self.verify_until(token).map(|(bearer, _)| bearer)
    }

    /// Who a token speaks for, and when it expires (`exp`, seconds since the epoch).
    fn verify_until(&self, token: &str) -> Result<(Bearer, i64), Problem> {
        let refused = |reason: &dyn std::fmt::Display| {
            tracing::debug!(%reason, "token refused");
            Problem::unauthorized("the bearer token is invalid or expired")
        };
        let header = jsonwebtoken::decode_header(token).map_err(|err| refused(&err))?;
        let (key, validation) = match header.alg {
            Algorithm::EdDSA => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| refused(&"no key id (kid)"))?;
                let key = self
                    .0
                    .by_kid
                    .get(kid)
                    .ok_or_else(|| refused(&format_args!("unknown key id {kid:?}")))?;
                (key, &self.0.eddsa)
            }
            Algorithm::HS256 => match &self.0.legacy {
                Some((key, validation)) => (key, validation),
                None => return Err(refused(&"HS256 tokens are not accepted")),
            },
            other => return Err(refused(&format_args!("algorithm {other:?}"))),
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|err| refused(&err))?;
        let user = Uuid::parse_str(&data.claims.sub)
            .map_err(|_| Problem::unauthorized("the bearer token does not name a user"))?;
        let session = match &data.claims.sid {
            Some(sid) => Uuid::parse_str(sid)
                .map_err(|_| Problem::unauthorized("the bearer token names no valid session"))?,
            None => user,
        };
        Ok((Bearer { user, session }, data.claims.exp))
    }
}

/// Tokens a [`CachingVerifier`] remembers at most; past that it forgets them all.
const REMEMBERED_TOKENS: usize = 10_000;

/// A [`Verifier`] that remembers the tokens it accepted until they expire, so that a client
/// that sends often with one token pays for its signature check once. A token is looked up by
/// its whole text, so only the very token that was checked is let through; an expired one is
/// checked again (and refused). It remembers signatures only: whether the session is still
/// live is asked on every request ([`crate::session::Sessions`]).
pub struct CachingVerifier {
    verifier: Verifier,
    accepted: std::sync::Mutex<HashMap<String, (Bearer, i64)>>,
}

impl CachingVerifier {
    /// Remembers what `verifier` accepts.
    pub fn new(verifier: Verifier) -> CachingVerifier {
        CachingVerifier {
            verifier,
            accepted: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Who a token speaks for ([`Verifier::verify`]).
    pub fn verify(&self, token: &str) -> Result<Bearer, Problem> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        let remembered = self.remembered().get(token).copied();
        if let Some((bearer, expires)) = remembered
            && now < expires.saturating_add(leeway)
        {
            return Ok(bearer);
        }
        let (bearer, expires) = self.verifier.verify_until(token)?;
        let mut accepted = self.remembered();
        if accepted.len() >= REMEMBERED_TOKENS {
            accepted.clear();
        }
        accepted.insert(token.to_owned(), (bearer, expires));
        Ok(bearer)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Bearer, i64)>> {
        // A panic while the map was held leaves it as it was: still a map of checked tokens.
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens: they are secrets.
        f.debug_struct("CachingVerifier")
            .field("verifier", &self.verifier)
            .field("remembered", &self.remembered().len())
            .finish()
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.0.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("legacy_hs256", &self.0.legacy.is_some())
            .finish()
    }
}

/// The public keys in `paths`, comma-separated PEM files (none when empty), as the variables
/// that list keys take them.
pub fn public_key_files(paths: &str) -> Result<Vec<PublicKey>, KeyError> {
    paths
        .split(',')
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .map(|path| PublicKey::from_file(&PathBuf::from(path)))
        .collect()
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, Problem> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caching_verifier_lets_through_only_the_tokens_it_checked_while_they_are_valid() {
        let verifier = CachingVerifier::new(verifier(&[1]));
        let issuer = issuer(1);
        let user = Uuid::now_v7();
        let token = issuer.issue(user, user).expect("token").token;
        assert_eq!(verifier.verify(&token).ok().map(|b| b.user), Some(user));
        assert_eq!(
            verifier.verify(&token).ok().map(|b| b.user),
            Some(user),
            "remembered"
        );
        // One character off is another token, checked (and refused).
        let mut forged = token.clone();
        let last = forged.pop().expect("a character");
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verifier.verify(&forged).is_err());
        // Remembered, but expired since: checked again, and refused.
        let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
        let claims = Claims {
            sub: user.to_string(),
            sid: None,
            iat: an_hour_ago - 60,
            exp: an_hour_ago,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(issuer.key.public.kid().to_owned());
        let expired = jsonwebtoken::encode(&header, &claims, &issuer.key.encoding).expect("token");
        verifier.remembered().insert(
            expired.clone(),
            (
                Bearer {
                    user,
                    session: user,
                },
                an_hour_ago,
            ),
        );
        assert!(verifier.verify(&expired).is_err());
        assert!(!format!("{verifier:?}").contains(&token));
    }

    /// A private key in PKCS#8 PEM made from `seed`, as `openssl genpkey` would write it.
    fn pem(seed: u8) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(Default::default())
            .expect("pem")
            .to_string()
    }

    fn issuer(seed: u8) -> Issuer {
        let key = SigningKey::from_pem(&pem(seed)).expect("key");
        Issuer::new(key, Duration::from_secs(60))
    }

    fn verifier_with(seeds: &[u8], legacy_hs256: Option<&[u8]>) -> Verifier {
        let keys: Vec<PublicKey> = seeds
            .iter()
            .map(|seed| issuer(*seed).key.public.clone())
            .collect();
        Verifier::new(&keys, legacy_hs256)
    }

    fn verifier(seeds: &[u8]) -> Verifier {
        verifier_with(seeds, None)
    }

    #[test]
    fn a_token_names_its_user_and_its_key() {
        let issuer = issuer(1);
        let user = Uuid::now_v7();
        let token = issuer.issue(user, user).expect("token").token;
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(issuer.key.public.kid()));
        assert_eq!(verifier(&[1]).verify(&token).expect("valid").user, user);
    }

    #[test]
    fn a_token_names_its_session_and_one_without_belongs_to_the_legacy_session() {
        let issuer = issuer(1);
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let issued = issuer.issue(user, session).expect("token");
        assert_eq!(
            verifier(&[1]).verify(&issued.token).expect("valid"),
            Bearer { user, session }
        );
        let lifetime = issued.expires_at - chrono::Utc::now();
        assert!((55..=60).contains(&lifetime.num_seconds()), "{lifetime}");
        assert!(!format!("{issued:?}").contains(&issued.token));
        let now = chrono::Utc::now().timestamp();
        let legacy = Claims {
            sub: user.to_string(),
            sid: None,
            iat: now,
            exp: now + 60,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(issuer.key.public.kid().to_owned());
        let old = jsonwebtoken::encode(&header, &legacy, &issuer.key.encoding).expect("token");
        let bearer = verifier(&[1]).verify(&old).expect("valid");
        assert_eq!(
            bearer,
            Bearer {
                user,
                session: user
            }
        );
        let bad = Claims {
            sid: Some("not-a-uuid".to_owned()),
            ..legacy
        };
        let bad = jsonwebtoken::encode(&header, &bad, &issuer.key.encoding).expect("token");
        assert!(verifier(&[1]).verify(&bad).is_err());
    }

    #[test]
    fn the_key_id_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of the key of A.1 (the seed below).
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey::from_verifying_key(&key.verifying_key());
        assert_eq!(public.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_a_retired_one_does_not() {
        let (old, new) = (issuer(1), issuer(2));
        let user = Uuid::now_v7();
        let both = verifier(&[1, 2]);
        assert_eq!(
            both.verify(&old.issue(user, user).expect("old").token)
                .ok()
                .map(|b| b.user),
            Some(user)
        );
        assert_eq!(
            both.verify(&new.issue(user, user).expect("new").token)
                .ok()
                .map(|b| b.user),
            Some(user)
        );
        let after = verifier(&[2]);
        let refused = after.verify(&old.issue(user, user).expect("old").token);
        assert_eq!(refused.expect_err("retired").code(), "unauthorized");
    }

    #[test]
    fn a_token_with_another_kid_or_none_is_refused() {
        let issuer = issuer(1);
        let claims = Claims {
            sub: Uuid::now_v7().to_string(),
            sid: None,
            iat: 0,
            exp: i64::MAX / 2,
        };
        for kid in [None, Some("someone-else".to_owned())] {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = kid;
            let token =
                jsonwebtoken::encode(&header, &claims, &issuer.key.encoding).expect("token");
            assert!(verifier(&[1]).verify(&token).is_err(), "{header:?}");
        }
    }

    #[test]
    fn hs256_tokens_pass_only_where_the_legacy_secret_is_accepted() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let user = Uuid::now_v7();
        let claims = Claims {
            sub: user.to_string(),
            sid: None,
            iat: 0,
            exp: chrono::Utc::now().timestamp() + 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("token");
        assert!(verifier(&[1]).verify(&token).is_err());
        let legacy = verifier_with(&[1], Some(secret));
        assert_eq!(legacy.verify(&token).ok().map(|b| b.user), Some(user));
        let other = verifier_with(&[1], Some(b"fedcba9876543210fedcba9876543210"));
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{}","iat":0,"exp":99999999999}}"#,
            Uuid::now_v7()
        ));
        let token = format!("{header}.{claims}.");
        assert!(verifier(&[1]).verify(&token).is_err());
    }

    #[test]
    fn key_files_say_what_is_wrong_and_never_show_a_private_key() {
        let dir = std::env::temp_dir().join(format!("chronicle-token-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        let private = dir.join("private.pem");
        std::fs::write(&private, pem(7)).expect("write");
        let signing = SigningKey::from_file(&private).expect("a private key");
        assert!(!format!("{signing:?}").contains("MC4C"), "{signing:?}");

        let refused = PublicKey::from_file(&private).expect_err("a private key is not public");
        assert!(refused.to_string().contains("public key only"), "{refused}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a key").expect("write");
        assert!(PublicKey::from_file(&garbage).is_err());
        assert!(SigningKey::from_file(&garbage).is_err());
        assert!(SigningKey::from_file(&dir.join("missing.pem")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bearer_takes_only_the_bearer_scheme() {
        use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("value"));
            headers
        };
        assert_eq!(bearer(&with("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")).ok(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            assert!(bearer(&with(bad)).is_err(), "{bad}");
        }
        assert!(bearer(&HeaderMap::new()).is_err());
    }
}
