//! Passwords: argon2id hashes, computed off the async threads, and the per-handle limit on
//! failed logins.
//!
//! Parameters (`CHRONICLE_PASSWORD_HASH_MEMORY_KIB`, `CHRONICLE_PASSWORD_HASH_ITERATIONS`)
//! default to OWASP's first argon2id recommendation: 19 MiB, 2 passes, 1 lane. On the 2-core
//! machines Chronicle is developed on one hash takes 38 to 45 ms in a release build. Each hash is
//! a PHC string that carries its own parameters, so raising them later keeps older hashes
//! verifiable.
//!
//! Hashing is CPU- and memory-bound, so it runs on threads of its own, one per core, each with
//! its argon2 memory allocated once and reused: a flood of logins queues (and meets the request
//! timeout) instead of taking more cores or memory. Allocating that memory per hash instead let
//! the allocator keep a freed 19 MiB block in each of its per-thread arenas: 799 MiB of resident
//! memory after the benchmark's 2,000 registrations, against 25-29 MiB before passwords.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{
    Output, ParamsString, PasswordHash, Salt, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use chronicle_infra::Problem;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

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
    /// The parameters of new hashes.
    params: Params,
    /// Work for the hashing threads.
    jobs: mpsc::Sender<Job>,
    /// A hash of no one's password, verified when there is no real one to verify, so that an
    /// unknown handle takes as long as a wrong password. Shared with each check, not copied.
    decoy: Arc<str>,
}

/// Work for a hashing thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashes waiting for a thread before a new one waits to be queued.
const QUEUE: usize = 1024;

impl Hasher {
    /// Starts the hashing threads, one per core, for hashes with `args`' parameters.
    pub(crate) async fn start(args: &HashArgs) -> anyhow::Result<Hasher> {
        let params = Params::new(args.memory_kib, args.iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for index in 0..cores {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("password-hash-{index}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        // One thread waits on the queue at a time; the others on the lock.
                        let job = queue
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .blocking_recv();
                        match job {
                            Some(job) => job(&mut memory),
                            None => return,
                        }
                    }
                })?;
        }
        let decoy_password = uuid::Uuid::new_v4().to_string().into_bytes();
        let decoy = hash_on(&jobs, params.clone(), decoy_password)
            .await
            .map_err(|problem| anyhow::anyhow!("cannot hash: {}", problem.code()))?;
        Ok(Hasher(Arc::new(HasherInner {
            params,
            jobs,
            decoy: decoy.into(),
        })))
    }

    /// The PHC string of a new hash of `password`, with a fresh salt.
    pub(crate) async fn hash(&self, password: &Password) -> Result<String, Problem> {
        hash_on(
            &self.0.jobs,
            self.0.params.clone(),
            password.bytes().to_vec(),
        )
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
        let decoy = Arc::clone(&self.0.decoy);
        on_a_hashing_thread(&self.0.jobs, move |memory| {
            let (phc, real) = match &stored {
                Some(phc) => (phc.as_str(), true),
                None => (&*decoy, false),
            };
            let matches = matches(&password, phc, memory).map_err(|err| Problem::internal(&err))?;
            Ok(real && matches)
        })
        .await
    }
}

/// The PHC string of a new hash of `password` with `params` and a fresh salt, computed by one of
/// the threads that take `jobs`.
async fn hash_on(
    jobs: &mpsc::Sender<Job>,
    params: Params,
    password: Vec<u8>,
) -> Result<String, Problem> {
    let password = zeroize::Zeroizing::new(password);
    on_a_hashing_thread(jobs, move |memory| {
        let salt = SaltString::generate(&mut OsRng);
        let hash = compute(
            &password,
            salt.as_salt(),
            Algorithm::Argon2id,
            Version::V0x13,
            params,
            memory,
        )
        .map_err(|err| Problem::internal(&err))?;
        Ok(hash.to_string())
    })
    .await
}

/// Runs `work` on one of the threads that take `jobs`, with that thread's memory, once one is
/// free.
async fn on_a_hashing_thread<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    work: impl FnOnce(&mut Vec<Block>) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let (answer, answered) = oneshot::channel();
    let started = Instant::now();
    let job: Job = Box::new(move |memory| {
        // A caller that stopped waiting needs no answer.
        let _ = answer.send(work(memory));
    });
    let stopped = || Problem::internal(&"the password hashing threads stopped");
    jobs.send(job).await.map_err(|_| stopped())?;
    let done = answered.await.map_err(|_| stopped())?;
    metrics::histogram!("command_password_hash_seconds").record(started.elapsed().as_secs_f64());
    done
}

/// The argon2 hash of `password` with `salt` and these parameters, computed in `memory` (grown
/// to the parameters' size if needed, and shrunk back when a larger, older hash grew it).
fn compute<'a>(
    password: &[u8],
    salt: Salt<'a>,
    algorithm: Algorithm,
    version: Version,
    params: Params,
    memory: &mut Vec<Block>,
) -> Result<PasswordHash<'a>, argon2::password_hash::Error> {
    let blocks = params.block_count();
    let kept = memory.len();
    if kept < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let output = Output::init_with(output_len, |out| {
        Ok(argon2.hash_password_into_with_memory(
            password,
            salt_bytes,
            out,
            &mut memory[..blocks],
        )?)
    });
    if kept != 0 && kept < memory.len() {
        memory.truncate(kept);
        memory.shrink_to_fit();
    }
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(output?),
    })
}

/// Whether `password` matches the PHC string `phc`, computed with `phc`'s own parameters.
fn matches(
    password: &[u8],
    phc: &str,
    memory: &mut Vec<Block>,
) -> Result<bool, argon2::password_hash::Error> {
    let stored = PasswordHash::new(phc)?;
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
        return Ok(false);
    };
    let version = stored
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let computed = compute(
        password,
        salt,
        Algorithm::try_from(stored.algorithm)?,
        version,
        Params::try_from(&stored)?,
        memory,
    )?;
    // `Output`'s equality takes the same time wherever the outputs differ.
    Ok(computed.hash.as_ref() == Some(&expected))
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

    async fn cheap() -> Hasher {
        Hasher::start(&HashArgs {
            memory_kib: 64,
            iterations: 1,
        })
        .await
        .expect("a hasher")
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_carries_its_parameters() {
        let hasher = cheap().await;
        let hash = hasher.hash(&password("correct horse")).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let (right, wrong) = (password("correct horse"), password("correct horsf"));
        assert!(hasher.verify(&right, Some(hash.clone())).await.expect("ok"));
        assert!(!hasher.verify(&wrong, Some(hash.clone())).await.expect("ok"));
        // Another hasher with other parameters still verifies it: they are in the hash.
        let other = Hasher::start(&HashArgs {
            memory_kib: 128,
            iterations: 2,
        })
        .await
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
