//! Randomness the tests can replay: a seeded generator and `CHRONICLE_TEST_SEED`.

use std::time::Duration;

use super::*;

/// A random alphanumeric string of `len` characters (good enough for test secrets).
pub(crate) fn random_alphanumeric(len: usize, rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())]))
        .collect()
}

/// `CHRONICLE_TEST_SEED`, when set: a seed in decimal or in hexadecimal with `0x`. Panics on
/// anything else, rather than running with a seed nobody asked for.
pub(crate) fn test_seed() -> Option<u64> {
    let value = non_empty_var("CHRONICLE_TEST_SEED")?;
    Some(parse_seed(&value).unwrap_or_else(|| {
        panic!("CHRONICLE_TEST_SEED={value:?} is not a number (decimal, or hexadecimal with 0x)")
    }))
}

/// A seed as [`Rng::for_test`] prints it (`0x…`) or in decimal.
pub(super) fn parse_seed(value: &str) -> Option<u64> {
    let value = value.trim();
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// A small deterministic random number generator (SplitMix64), so tests need no extra crate and
/// can print their seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator that yields the same sequence for the same seed.
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from the random bits of a fresh UUIDv7 and the clock.
    pub(crate) fn from_entropy() -> Rng {
        let uuid = uuid::Uuid::now_v7().as_u128();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mixed = uuid ^ nanos.rotate_left(64);
        // Folding 128 bits into 64 keeps all of their entropy that fits.
        Rng((mixed as u64) ^ ((mixed >> 64) as u64))
    }

    /// The generator of a randomized test: seeded from `CHRONICLE_TEST_SEED` when it is set
    /// (decimal, or hexadecimal with `0x`), from entropy otherwise. The seed is printed either
    /// way, so that a failure can be replayed with `CHRONICLE_TEST_SEED=<seed>`.
    pub(crate) fn for_test() -> Rng {
        let rng = match test_seed() {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        println!(
            "CHRONICLE_TEST_SEED={:#x} (set it to replay this test's random choices)",
            rng.state()
        );
        rng
    }

    /// The seed-equivalent state, to print for reproduction.
    pub(crate) fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// A duration uniformly between `low_ms` and `high_ms` milliseconds.
    pub(crate) fn millis_between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.next_u64() % (high_ms - low_ms + 1))
    }

    /// A random element of `items`, or `None` when it is empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_printed_seed_replays_the_same_sequence() {
        let mut rng = Rng::seeded(0xdead_beef);
        let printed = format!("{:#x}", rng.state());
        let first: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        let mut replayed = Rng::seeded(parse_seed(&printed).expect("the printed seed parses"));
        let again: Vec<u64> = (0..4).map(|_| replayed.next_u64()).collect();
        assert_eq!(first, again);
        assert_eq!(parse_seed("3735928559"), Some(0xdead_beef));
        assert_eq!(parse_seed(" 0XDEADBEEF "), Some(0xdead_beef));
        assert_eq!(parse_seed("seed"), None);
        assert_eq!(parse_seed("0x"), None);
    }
}
