//! Keyset cursors: where a page ended, as an opaque token.
//!
//! Every list is ordered newest first by (timestamp, id), a total order, so "the items strictly
//! before this key" never repeats or skips an item, however many new items arrive meanwhile
//! (new items sort before the first page). The token is URL-safe base64 of 24 bytes: the
//! timestamp in microseconds since the epoch, then the id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chronicle_infra::Problem;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The key of the last item of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

impl Cursor {
    /// A key after every item: where the first page starts.
    pub(crate) fn start() -> Cursor {
        Cursor {
            at: DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
            id: Uuid::max(),
        }
    }

    pub(crate) fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.at.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn decode(token: &str) -> Result<Cursor, Problem> {
        let invalid = invalid_cursor;
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let bytes: [u8; 24] = bytes.try_into().map_err(|_| invalid())?;
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&bytes[..8]);
        let at = DateTime::from_timestamp_micros(i64::from_be_bytes(micros)).ok_or_else(invalid)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[8..]);
        Ok(Cursor {
            at,
            id: Uuid::from_bytes(id),
        })
    }
}

/// What a page's `next_cursor` is made of.
pub(crate) trait PageKey {
    /// The opaque token.
    fn token(&self) -> String;
}

impl PageKey for Cursor {
    fn token(&self) -> String {
        self.encode()
    }
}

impl PageKey for ScoreCursor {
    fn token(&self) -> String {
        self.encode()
    }
}

/// The key of the last item of a page of search results, ordered by score (highest first),
/// then id. Encoded like [`Cursor`], the score's IEEE 754 bits in place of the time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScoreCursor {
    pub(crate) score: f64,
    pub(crate) id: Uuid,
}

impl ScoreCursor {
    /// A key after every item: where the first page starts.
    pub(crate) fn start() -> ScoreCursor {
        ScoreCursor {
            score: f64::INFINITY,
            id: Uuid::max(),
        }
    }

    pub(crate) fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.score.to_bits().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A score that is not a finite, non-negative number was not made here.
    pub(crate) fn decode(token: &str) -> Result<ScoreCursor, Problem> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid_cursor())?;
        let bytes: [u8; 24] = bytes.try_into().map_err(|_| invalid_cursor())?;
        let mut score = [0u8; 8];
        score.copy_from_slice(&bytes[..8]);
        let score = f64::from_bits(u64::from_be_bytes(score));
        if !score.is_finite() || score < 0.0 {
            return Err(invalid_cursor());
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[8..]);
        Ok(ScoreCursor {
            score,
            id: Uuid::from_bytes(id),
        })
    }
}

/// 400 `invalid_cursor`: a cursor this service did not make.
pub(crate) fn invalid_cursor() -> Problem {
    Problem::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "the cursor is not one returned by this service",
    )
    .titled("The cursor is not valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1_795_690_318_123_000).expect("time"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).expect("cursor"), cursor);
    }

    #[test]
    fn score_cursors_round_trip_and_refuse_what_no_score_is() {
        let cursor = ScoreCursor {
            score: 0.0607927,
            id: Uuid::now_v7(),
        };
        assert_eq!(
            ScoreCursor::decode(&cursor.encode()).expect("cursor"),
            cursor
        );
        for score in [f64::NAN, f64::INFINITY, -1.0] {
            let forged = ScoreCursor {
                score,
                id: Uuid::nil(),
            }
            .encode();
            assert_eq!(
                ScoreCursor::decode(&forged).expect_err("invalid").code(),
                "invalid_cursor"
            );
        }
    }

    #[test]
    fn rejects_what_it_did_not_make() {
        for token in ["", "x", "AAAA", "!!", &"A".repeat(33)] {
            assert_eq!(
                Cursor::decode(token).expect_err("invalid").code(),
                "invalid_cursor"
            );
        }
    }
}
