//! Resume ids: where a stream is in the log, as an opaque token.
//!
//! A stream's place is one offset per partition: every message of partition `p` at an offset
//! below `next[p]` has been sent (or was not for this stream). Messages are keyed by the place
//! of their event in the log, which is the same in every generation of the read models and
//! every query API, so a stream resumes from its id after any restart or rebuild. The token is
//! URL-safe base64 of LEB128 varints: the number of partitions, then each partition's next
//! offset, partition 0 first.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chronicle_infra::Problem;

/// A topic has at most this many partitions in a resume id (Kafka's practical limit is far
/// below; the bound keeps a forged id from costing memory).
const MAX_PARTITIONS: usize = 4096;

/// The next offset of each partition; a partition not named is at 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Place(BTreeMap<i32, i64>);

impl Place {
    /// The place after the offsets in `next` (partition, next offset).
    pub(crate) fn new(next: impl IntoIterator<Item = (i32, i64)>) -> Place {
        Place(next.into_iter().filter(|(p, _)| *p >= 0).collect())
    }

    /// Partition `partition`'s next offset.
    pub(crate) fn next(&self, partition: i32) -> i64 {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    /// Marks everything of `partition` up to and including `offset` as sent.
    pub(crate) fn pass(&mut self, partition: i32, offset: i64) {
        let next = self.0.entry(partition).or_default();
        *next = (*next).max(offset + 1);
    }

    /// Marks what a page of the rows in `gaps` (read in partition, then offset order) passed,
    /// when the page was full and ended in `partition`: the earlier partitions' gaps whole, and
    /// `partition` up to and including `offset`. The later partitions are not reached yet.
    pub(crate) fn pass_page(&mut self, gaps: &[(i32, i64, i64)], partition: i32, offset: i64) {
        for &(p, _, until) in gaps {
            if p < partition {
                self.pass(p, until - 1);
            }
        }
        self.pass(partition, offset);
    }

    /// Every partition at the later of its offsets here and in `other`.
    pub(crate) fn join(&self, other: &Place) -> Place {
        let mut joined = self.clone();
        for (partition, next) in &other.0 {
            joined.pass(*partition, next - 1);
        }
        joined
    }

    /// The partitions where `until` is ahead of this place: (partition, from, until).
    pub(crate) fn gaps(&self, until: &Place) -> Vec<(i32, i64, i64)> {
        until
            .0
            .iter()
            .filter(|(partition, next)| **next > self.next(**partition))
            .map(|(partition, next)| (*partition, self.next(*partition), *next))
            .collect()
    }

    /// The opaque token.
    pub(crate) fn encode(&self) -> String {
        let count = self.0.keys().next_back().map_or(0, |last| *last as u64 + 1);
        let mut bytes = Vec::with_capacity(2 + self.0.len() * 4);
        put_varint(&mut bytes, count);
        for partition in 0..count {
            put_varint(&mut bytes, self.next(partition as i32) as u64);
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`Place::encode`]; anything else is 400 `invalid_cursor`.
    pub(crate) fn decode(token: &str) -> Result<Place, Problem> {
        let invalid = || {
            Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "the resume id (Last-Event-ID or `after`) was not made by this service",
            )
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| invalid())?;
        let mut rest = bytes.as_slice();
        let count = take_varint(&mut rest).ok_or_else(invalid)?;
        if count > MAX_PARTITIONS as u64 {
            return Err(invalid());
        }
        let mut place = BTreeMap::new();
        for partition in 0..count as i32 {
            let next = take_varint(&mut rest)
                .and_then(|next| i64::try_from(next).ok())
                .ok_or_else(invalid)?;
            if next > 0 {
                place.insert(partition, next);
            }
        }
        if !rest.is_empty() {
            return Err(invalid());
        }
        Ok(Place(place))
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            // The shortest encoding only: one value, one token.
            if byte == 0 && shift > 0 {
                return None;
            }
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(next in proptest::collection::btree_map(0..64i32, 0..i64::MAX, 0..16)) {
            let place = Place::new(next.into_iter().filter(|(_, n)| *n > 0));
            prop_assert_eq!(Place::decode(&place.encode()).ok(), Some(place));
        }

        #[test]
        fn never_panics_on_a_forged_token(token in "[A-Za-z0-9_-]{0,80}") {
            let _ = Place::decode(&token);
        }
    }

    #[test]
    fn refuses_what_it_did_not_make() {
        for token in ["!", "gICAgICAgICAgAE", "/////w", "AQ==", "AgEBAQ"] {
            assert!(Place::decode(token).is_err(), "{token:?}");
        }
    }

    #[test]
    fn gaps_and_joins() {
        let from = Place::new([(0, 5), (2, 9)]);
        let until = Place::new([(0, 7), (1, 3), (2, 9)]);
        assert_eq!(from.gaps(&until), vec![(0, 5, 7), (1, 0, 3)]);
        let joined = from.join(&Place::new([(0, 2), (1, 4)]));
        assert_eq!(joined, Place::new([(0, 5), (1, 4), (2, 9)]));
        let mut paged = from.clone();
        paged.pass_page(&from.gaps(&until), 1, 1);
        assert_eq!(paged, Place::new([(0, 7), (1, 2), (2, 9)]));
        let mut place = Place::default();
        place.pass(3, 10);
        place.pass(3, 4);
        assert_eq!(place.next(3), 11);
        assert_eq!(
            place.encode(),
            Place::decode(&place.encode()).expect("ok").encode()
        );
    }
}
