//! Token keys for the tests: a fresh Ed25519 key pair per test app, written as the PEM files an
//! operator makes with `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use serde_json::Value;

use super::Rng;

/// An Ed25519 key pair in PEM files, and what a test needs to sign tokens with it.
#[derive(Clone)]
pub(crate) struct TokenKey {
    /// The PKCS#8 private key file (`CHRONICLE_TOKEN_SIGNING_KEY_FILE`).
    pub(crate) private_file: PathBuf,
    /// The SPKI public key file (one of `CHRONICLE_TOKEN_PUBLIC_KEY_FILES`).
    pub(crate) public_file: PathBuf,
    /// The key id its tokens carry.
    pub(crate) kid: String,
    encoding: jsonwebtoken::EncodingKey,
}

impl TokenKey {
    /// A key pair from `rng`, written to `<dir>/<name>.pem` and `<dir>/<name>.pub.pem`.
    pub(crate) fn generate(dir: &Path, name: &str, rng: &mut Rng) -> TokenKey {
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let private_file = dir.join(format!("{name}.pem"));
        let public_file = dir.join(format!("{name}.pub.pem"));
        let private_pem = key
            .to_pkcs8_pem(Default::default())
            .expect("a PKCS#8 PEM of the test key");
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("an SPKI PEM of the test key");
        std::fs::write(&private_file, private_pem.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", private_file.display()));
        std::fs::write(&public_file, public_pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", public_file.display()));
        let kid = chronicle_infra::token::PublicKey::from_file(&public_file)
            .expect("the test's public key")
            .kid()
            .to_owned();
        let der = key.to_pkcs8_der().expect("a PKCS#8 DER of the test key");
        TokenKey {
            private_file,
            public_file,
            kid,
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        }
    }

    /// A token with `claims`, signed with this key and naming it, as the command API signs.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_as(claims, &self.kid)
    }

    /// A token with `claims` signed with this key but naming the key `kid` (a forgery when
    /// `kid` is another key's).
    pub(crate) fn sign_as(&self, claims: &Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("failed to sign a test token")
    }
}

/// An HS256 token with `claims`, signed with `secret`, as tokens were made before Ed25519.
pub(crate) fn sign_hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("failed to sign a test token")
}

/// The key id in a token's header.
pub(crate) fn token_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}
