//! Passwords: argon2id hashes, computed off the async threads, and the per-handle limit on
//! failed logins.
//!
//! Parameters (`CHRONICLE_PASSWORD_HASH_MEMORY_KIB`, `CHRONICLE_PASSWORD_HASH_ITERATIONS`)
//! default to OWASP's first argon2id recommendation: 19 MiB, 2 passes, 1 lane. On the 2-core
//! machines Chronicle is developed on one hash takes 45 ms in a release build. Each hash is a PHC
//! string that carries its own parameters, so raising them later keeps older hashes verifiable.
//!
//! Hashing is CPU- and memory-bound, so it runs on Tokio's blocking threads, at most one per core
//! at a time: a flood of logins queues (and meets the request timeout) instead of taking
//! unbounded memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use chronicle_infra::Problem;
use serde::Deserialize;
use tokio::sync::Semaphore;

/// A password as a client sent it: never shown by `Debug`, wiped from memory when dropped.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct Password(String);

impl Drop for Password {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Password {
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Checks the rule for a new password: 8 to 128 characters (any, spaces included; a
    /// password is never trimmed).
    pub(crate) fn check_new(&self, field: &str) -> Result<(), Problem> {
        let length = self.0.chars().count();
        if (8..=128).contains(&length) {
            Ok(())
        } else {
            Err(Problem::validation(format!(
                "{field} must be 8 to 128 characters (got {length})"
            )))
        }
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// `CHRONICLE_PASSWORD_HASH_*`: the argon2id cost of new hashes.
#[derive(Debug, Clone, clap::Args)]
pub struct HashArgs {
    /// `CHRONICLE_PASSWORD_HASH_MEMORY_KIB`: memory of one argon2id hash, in KiB (default
    /// 19456, 19 MiB: OWASP's recommendation with 2 passes).
    #[arg(long = "password-hash-memory-kib", env = "CHRONICLE_PASSWORD_HASH_MEMORY_KIB",
          default_value_t = 19_456, value_parser = clap::value_parser!(u32).range(8..=4_194_304))]
    pub memory_kib: u32,
    /// `CHRONICLE_PASSWORD_HASH_ITERATIONS`: passes over that memory (default 2).
    #[arg(long = "password-hash-iterations", env = "CHRONICLE_PASSWORD_HASH_ITERATIONS",
          default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub iterations: u32,
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub(crate) struct Hasher(Arc<HasherInner>);

struct HasherInner {
    argon2: Argon2<'static>,
    /// Hashes running at once, at most one per core.
    permits: Arc<Semaphore>,
    /// A hash of no one's password, verified when there is no real one to verify, so that an
    /// unknown handle takes as long as a wrong password.
    decoy: String,
}

impl Hasher {
    /// A hasher with `args`' parameters.
    pub(crate) fn new(args: &HashArgs) -> anyhow::Result<Hasher> {
        let params = Params::new(args.memory_kib, args.iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let decoy = argon2
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map_err(|err| anyhow::anyhow!("cannot hash: {err}"))?
            .to_string();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Hasher(Arc::new(HasherInner {
            argon2,
            permits: Arc::new(Semaphore::new(cores)),
            decoy,
        })))
    }

    /// The PHC string of a new hash of `password`, with a fresh salt.
    pub(crate) async fn hash(&self, password: &Password) -> Result<String, Problem> {
        let password = zeroize::Zeroizing::new(password.0.clone());
        self.blocking(move |argon2, _| {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|err| Problem::internal(&err))
        })
        .await
    }

    /// Whether `password` matches `stored` (a PHC string). With no stored hash the answer is
    /// no, after the same work as a real check.
    pub(crate) async fn verify(
        &self,
        password: &Password,
        stored: Option<String>,
    ) -> Result<bool, Problem> {
        let password = zeroize::Zeroizing::new(password.bytes().to_vec());
        self.blocking(move |argon2, decoy| {
            let (phc, real) = match &stored {
                Some(phc) => (phc.as_str(), true),
                None => (decoy, false),
            };
            let parsed = PasswordHash::new(phc).map_err(|err| Problem::internal(&err))?;
            // The parameters are the stored hash's own, not necessarily today's.
            let matches = argon2.verify_password(&password, &parsed).is_ok();
            Ok(real && matches)
        })
        .await
    }

    /// Runs `work` on a blocking thread once a core is free.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>, &str) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        let permit = Arc::clone(&self.0.permits)
            .acquire_owned()
            .await
            .map_err(|err| Problem::internal(&err))?;
        let inner = Arc::clone(&self.0);
        let started = Instant::now();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&inner.argon2, &inner.decoy)
        })
        .await
        .map_err(|err| Problem::internal(&err))?;
        metrics::histogram!("command_password_hash_seconds")
            .record(started.elapsed().as_secs_f64());
        done
    }
}

/// How many failures in a row a key may have at once before it must wait.
const FAILURE_BURST: u32 = 5;
/// After the burst, one more attempt per this interval.
const FAILURE_INTERVAL: Duration = Duration::from_secs(180);
/// Keys held before the forgotten ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// Failed password checks per key (a handle, or a user): GCRA over failures. A key may fail
/// [`FAILURE_BURST`] times at once, then once per [`FAILURE_INTERVAL`]; while it must wait every
/// attempt is refused before its password is checked, right or wrong, so the refusal says
/// nothing about the password. A success forgets the key's failures.
///
/// Each key holds one instant, its "theoretical arrival time": it moves on by the interval with
/// each failure, and a key whose time has passed is the same as one never seen. Held keys are
/// bounded by the failures of the last 15 minutes, and those by the hashing rate (a failure
/// costs a hash): at most about 40,000 per core.
#[derive(Clone, Default)]
pub(crate) struct Failures(Arc<Mutex<HashMap<String, Instant>>>);

impl Failures {
    /// Counts an attempt of `key` as a failure until it succeeds ([`Failures::succeeded`]), or
    /// answers `Err(wait)` while `key` must wait. Counting before the check, not after, keeps
    /// concurrent attempts from all slipping in under the limit.
    pub(crate) fn attempt(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut held = self.held();
        if held.len() >= SWEEP_ABOVE {
            held.retain(|_, due| *due > now);
        }
        let due = held.get(key).map_or(now, |due| (*due).max(now));
        let allowance = FAILURE_INTERVAL * (FAILURE_BURST - 1);
        match due.checked_sub(allowance) {
            Some(open) if open > now => Err(open - now),
            _ => {
                held.insert(key.to_owned(), due + FAILURE_INTERVAL);
                Ok(())
            }
        }
    }

    /// Forgets `key`'s failures.
    pub(crate) fn succeeded(&self, key: &str) {
        self.held().remove(key);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while it was held leaves a map of instants: still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        serde_json::from_value(serde_json::json!(text)).expect("a password")
    }

    fn cheap() -> Hasher {
        Hasher::new(&HashArgs {
            memory_kib: 64,
            iterations: 1,
        })
        .expect("a hasher")
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_carries_its_parameters() {
        let hasher = cheap();
        let hash = hasher.hash(&password("correct horse")).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let (right, wrong) = (password("correct horse"), password("correct horsf"));
        assert!(hasher.verify(&right, Some(hash.clone())).await.expect("ok"));
        assert!(!hasher.verify(&wrong, Some(hash.clone())).await.expect("ok"));
        // Another hasher with other parameters still verifies it: they are in the hash.
        let other = Hasher::new(&HashArgs {
            memory_kib: 128,
            iterations: 2,
        })
        .expect("a hasher");
        assert!(
            other
                .verify(&password("correct horse"), Some(hash))
                .await
                .expect("verified")
        );
        assert!(
            !hasher
                .verify(&password("anything"), None)
                .await
                .expect("decoy")
        );
    }

    #[test]
    fn new_passwords_are_8_to_128_characters_and_never_shown() {
        assert!(password("1234567").check_new("password").is_err());
        assert!(password("12345678").check_new("password").is_ok());
        assert!(password(&"é".repeat(128)).check_new("password").is_ok());
        assert!(password(&"a".repeat(129)).check_new("password").is_err());
        assert!(!format!("{:?}", password("hunter22")).contains("hunter22"));
    }

    #[test]
    fn five_failures_then_one_per_interval_and_a_success_forgets() {
        let failures = Failures::default();
        let start = Instant::now();
        for _ in 0..FAILURE_BURST {
            assert_eq!(failures.attempt("alice", start), Ok(()));
        }
        let wait = failures.attempt("alice", start).expect_err("must wait");
        assert_eq!(wait, FAILURE_INTERVAL);
        assert_eq!(failures.attempt("bob", start), Ok(()), "per key");
        let later = start + FAILURE_INTERVAL;
        assert_eq!(failures.attempt("alice", later), Ok(()));
        assert!(
            failures.attempt("alice", later).is_err(),
            "one per interval"
        );
        failures.succeeded("alice");
        assert_eq!(failures.attempt("alice", later), Ok(()));
        // After a quiet burst's worth of intervals, a key has its whole burst again.
        assert_eq!(failures.attempt("carol", start), Ok(()));
        let quiet = start + FAILURE_INTERVAL * FAILURE_BURST;
        for _ in 0..FAILURE_BURST {
            assert_eq!(failures.attempt("carol", quiet), Ok(()));
        }
        assert!(failures.attempt("carol", quiet).is_err());
    }
}
