//! Positions: opaque tokens naming where an event sits in the log.
//!
//! A position is a (partition, offset) pair. Clients get one from every command and may hand it
//! back as `min_position` to read their own writes. The encoding is URL-safe base64 of 12 bytes
//! (big-endian partition then offset), so that clients treat it as opaque and it can be changed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Where one event sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The Kafka partition.
    pub partition: i32,
    /// The event's offset within the partition.
    pub offset: i64,
}

/// A string that is not a position.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a position returned by this service")]
pub struct InvalidPosition(pub String);

const ENCODED_LEN: usize = 12;

impl Position {
    /// The opaque token for this position.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; ENCODED_LEN];
        bytes[..4].copy_from_slice(&self.partition.to_be_bytes());
        bytes[4..].copy_from_slice(&self.offset.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`Position::encode`].
    pub fn decode(token: &str) -> Result<Position, InvalidPosition> {
        let invalid = || InvalidPosition(token.chars().take(64).collect());
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let bytes: [u8; ENCODED_LEN] = bytes.try_into().map_err(|_| invalid())?;
        let mut partition = [0u8; 4];
        partition.copy_from_slice(&bytes[..4]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&bytes[4..]);
        let position = Position {
            partition: i32::from_be_bytes(partition),
            offset: i64::from_be_bytes(offset),
        };
        if position.partition < 0 || position.offset < 0 {
            return Err(invalid());
        }
        Ok(position)
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (partition, offset) in [(0, 0), (11, 1_234_567), (i32::MAX, i64::MAX)] {
            let position = Position { partition, offset };
            let token = position.encode();
            assert_eq!(token.len(), 16);
            assert_eq!(Position::decode(&token), Ok(position));
        }
    }

    #[test]
    fn rejects_what_it_did_not_make() {
        for token in [
            "",
            "abc",
            "AAAAAAAAAAAAAAAAAAAA",
            "!!!!!!!!!!!!!!!!",
            "________________",
        ] {
            assert!(Position::decode(token).is_err(), "{token:?}");
        }
    }
}
