//! Personal data in events, sealed for crypto-shredding.
//!
//! The log is kept forever, replayed and copied, so it cannot forget anyone by being edited.
//! Instead, the fields of an event that say something about a person (a handle, a display name,
//! a bio, a post's body) are written *sealed*: encrypted with AES-256-GCM under a key of their
//! own user, the *data key*, which the command API keeps outside the log. Destroying a user's
//! key makes every sealed field of theirs unreadable wherever the log went.
//!
//! A field is a [`Text`]: plaintext (events from before sealing, or from a foreign producer) or
//! sealed. A sealed field on the wire is a JSON object in place of the string:
//!
//! ```json
//! {"sealed": "A256GCM", "key": "<owner's user id>", "key_version": 1,
//!  "nonce": "<12 bytes, base64url>", "ciphertext": "<ciphertext and 16-byte tag, base64url>"}
//! ```
//!
//! `key` and `key_version` name the data key; the nonce is random, fresh for every field. The
//! associated data is the field's name and the owner's id, so a sealed value opens only as the
//! field it was sealed as, under its owner's key.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The only algorithm sealed fields use.
const ALGORITHM: &str = "A256GCM";

/// A user's data key: 32 random bytes, never shown by `Debug`, wiped from memory when dropped.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> DataKey {
        let key = Aes256Gcm::generate_key(OsRng);
        DataKey(Zeroizing::new(key.into()))
    }

    /// The key with these bytes (as stored), if there are 32 of them.
    pub fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(Zeroizing::new(bytes)))
    }

    /// The key's bytes, to store.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.0))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// The current version of every data key (there is no rotation yet).
pub const KEY_VERSION: u32 = 1;

/// A personal text field: readable, or sealed under its owner's data key.
#[derive(Clone, PartialEq, Eq)]
pub enum Text {
    /// The text itself.
    Plain(String),
    /// The text, encrypted.
    Sealed(Sealed),
}

/// A sealed text: what it takes to open it, given the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Always `A256GCM`.
    sealed: String,
    /// The user whose data key sealed it.
    key: Uuid,
    /// That key's version.
    key_version: u32,
    /// 12 bytes, base64url.
    nonce: String,
    /// The ciphertext with its 16-byte tag, base64url.
    ciphertext: String,
}

impl Sealed {
    /// The user whose data key opens it.
    pub fn owner(&self) -> Uuid {
        self.key
    }
}

/// Why a sealed text could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The owner's data key is not there: destroyed by their erasure, or never known here.
    #[error("the data key of user {0} is gone")]
    NoKey(Uuid),
    /// The text was not sealed with that key as that field, or it was altered.
    #[error("the sealed {field} of user {owner} does not open: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its owner.
        owner: Uuid,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The associated data of `field` of `owner`.
fn aad(field: &str, owner: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(field.len() + 17);
    aad.extend_from_slice(field.as_bytes());
    aad.push(0);
    aad.extend_from_slice(owner.as_bytes());
    aad
}

impl Text {
    /// The plaintext, or `""` while sealed. The projector opens every field before it applies
    /// an event, so it only ever sees the first.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Plain(text) => text,
            Text::Sealed(_) => "",
        }
    }

    /// Whether it is sealed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Text::Sealed(_))
    }

    /// The owner of the key that opens it, if it is sealed.
    pub fn sealed_by(&self) -> Option<Uuid> {
        match self {
            Text::Plain(_) => None,
            Text::Sealed(sealed) => Some(sealed.key),
        }
    }

    /// Seals it, if it is plaintext, as `field` of `owner` under `key`.
    pub fn seal(&mut self, field: &'static str, owner: Uuid, key: &DataKey) {
        let Text::Plain(text) = self else {
            return;
        };
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let aad = aad(field, owner);
        let payload = Payload {
            msg: text.as_bytes(),
            aad: &aad,
        };
        // Encryption with a valid key only fails for inputs of 64 GiB.
        let Ok(ciphertext) = key.cipher().encrypt(&nonce, payload) else {
            return;
        };
        *self = Text::Sealed(Sealed {
            sealed: ALGORITHM.to_owned(),
            key: owner,
            key_version: KEY_VERSION,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
        });
    }

    /// Opens it in place, if it is sealed, as `field`, with the key `key_of` gives for its owner.
    pub fn open(
        &mut self,
        field: &'static str,
        key_of: &impl Fn(Uuid) -> Option<DataKey>,
    ) -> Result<(), OpenError> {
        let Text::Sealed(sealed) = self else {
            return Ok(());
        };
        let owner = sealed.key;
        let invalid = |reason| OpenError::Invalid {
            field,
            owner,
            reason,
        };
        if sealed.sealed != ALGORITHM {
            return Err(invalid("unknown algorithm"));
        }
        if sealed.key_version != KEY_VERSION {
            return Err(invalid("unknown key version"));
        }
        let key = key_of(owner).ok_or(OpenError::NoKey(owner))?;
        let nonce: [u8; 12] = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or_else(|| invalid("the nonce is not 12 bytes of base64url"))?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(&sealed.ciphertext)
            .map_err(|_| invalid("the ciphertext is not base64url"))?;
        let aad = aad(field, owner);
        let payload = Payload {
            msg: &ciphertext,
            aad: &aad,
        };
        let plain = key
            .cipher()
            .decrypt(&Nonce::from(nonce), payload)
            .map_err(|_| invalid("authentication failed"))?;
        let text = String::from_utf8(plain).map_err(|_| invalid("the plaintext is not UTF-8"))?;
        *self = Text::Plain(text);
        Ok(())
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Plain(String::new())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text::Plain(text.to_owned())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text::Plain(text)
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, Text::Plain(text) if text == other)
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Text::Plain(text) => text.fmt(f),
            Text::Sealed(sealed) => write!(f, "Sealed(key {})", sealed.key),
        }
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Text::Plain(text) => serializer.serialize_str(text),
            Text::Sealed(sealed) => sealed.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Plain(String),
            Sealed(Sealed),
        }
        Ok(match Wire::deserialize(deserializer) {
            Ok(Wire::Plain(text)) => Text::Plain(text),
            Ok(Wire::Sealed(sealed)) => Text::Sealed(sealed),
            Err(_) => {
                return Err(serde::de::Error::custom(
                    "expected a string or a sealed text object",
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_text_opens_with_its_key_as_its_field_only() {
        let (owner, key) = (Uuid::now_v7(), DataKey::generate());
        let mut text = Text::from("Alice from Amsterdam");
        text.seal("display_name", owner, &key);
        assert!(text.is_sealed());
        assert_eq!(text.sealed_by(), Some(owner));
        let json = serde_json::to_string(&text).expect("json");
        assert!(!json.contains("Alice"), "{json}");
        let sealed: Text = serde_json::from_str(&json).expect("reads back");
        assert_eq!(sealed, text);

        let with = |key: &DataKey| {
            let key = key.clone();
            move |who: Uuid| (who == owner).then(|| key.clone())
        };
        let mut opened = sealed.clone();
        opened.open("display_name", &with(&key)).expect("opens");
        assert_eq!(opened, "Alice from Amsterdam");

        let mut as_other_field = sealed.clone();
        assert!(matches!(
            as_other_field.open("bio", &with(&key)),
            Err(OpenError::Invalid { .. })
        ));
        let mut with_other_key = sealed.clone();
        assert!(matches!(
            with_other_key.open("display_name", &with(&DataKey::generate())),
            Err(OpenError::Invalid { .. })
        ));
        let mut destroyed = sealed;
        assert_eq!(
            destroyed.open("display_name", &|_| None),
            Err(OpenError::NoKey(owner))
        );
        assert!(destroyed.is_sealed(), "a failed open leaves it sealed");
    }

    #[test]
    fn every_seal_has_a_nonce_of_its_own_and_plaintext_passes_through() {
        let (owner, key) = (Uuid::now_v7(), DataKey::generate());
        let (mut a, mut b) = (Text::from("same"), Text::from("same"));
        a.seal("body", owner, &key);
        b.seal("body", owner, &key);
        assert_ne!(a, b);
        let mut plain = Text::from("as is");
        plain.open("body", &|_| None).expect("nothing to open");
        assert_eq!(serde_json::to_string(&plain).expect("json"), r#""as is""#);
        assert!(serde_json::from_str::<Text>("5").is_err());
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey([redacted])");
        assert!(DataKey::from_bytes(&[0; 31]).is_none());
    }
}
