//! Point reads, coalesced: many "which of these ids exist, and what do they map to" checks
//! answered by a few `= ANY($1)` statements.
//!
//! Commands check that the post or user they name exists, and every authenticated request
//! checks that its session is live; each is one indexed read. Under load most of the cost of
//! such a read is the cost of a statement (a round trip, a bind, an executor start), not of its
//! one row. So the checks that arrive while earlier ones are running wait and then go together,
//! as one statement: alone, a check goes at once; under load, a few statements at a time carry
//! all of them.
//!
//! A check joins a batch when it is asked, and the batch's statement starts after every check
//! in it joined, so a check sees at least what it would have seen on its own (a command's
//! existence check, for instance, is asked after its `min_position` wait).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::Problem;

/// Most checks one statement carries.
const MAX_BATCH: usize = 256;
/// Statements of one kind that usually run at once; further checks wait and go together.
pub const IN_FLIGHT: usize = 2;
/// Checks waiting for a statement before a new one waits to be queued.
const QUEUE: usize = 4096;

/// What a batch's statement answers: for each id found, the id it maps to (a post's author, a
/// session's user, or the id itself).
pub type Found = HashMap<Uuid, Uuid>;

/// A statement's answer, on its way.
type Fetched = std::pin::Pin<Box<dyn Future<Output = Result<Found, Problem>> + Send>>;

/// One check: the id, in the read schema of the request that asks.
struct Check {
    schema: Arc<str>,
    id: Uuid,
    answer: oneshot::Sender<Result<Option<Uuid>, Problem>>,
}

/// A queue of checks of one kind, and the task that answers them in batches.
#[derive(Clone)]
pub struct Coalescer {
    checks: mpsc::Sender<Check>,
}

impl Coalescer {
    /// Answers checks with `sql(schema)` run on `pool`: a statement of two `uuid` columns (the
    /// id, what it maps to) with the batch's ids as `$1`.
    pub fn sql(pool: &Pool, sql: fn(&str) -> String) -> Coalescer {
        Coalescer::start(fetcher(pool, sql), IN_FLIGHT)
    }

    /// Starts answering checks with `fetch(schema, ids)`, at most `in_flight` at once, each
    /// with up to [`MAX_BATCH`] ids.
    pub fn start<F, Fut>(fetch: F, in_flight: usize) -> Coalescer
    where
        F: Fn(Arc<str>, Vec<Uuid>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Found, Problem>> + Send + 'static,
    {
        let (checks, queue) = mpsc::channel(QUEUE);
        tokio::spawn(answer_in_batches(Arc::new(fetch), queue, in_flight));
        Coalescer { checks }
    }

    /// What `id` maps to in `schema`, or `None` when it is not there.
    pub async fn check(&self, schema: &str, id: Uuid) -> Result<Option<Uuid>, Problem> {
        let (answer, answered) = oneshot::channel();
        let check = Check {
            schema: schema.into(),
            id,
            answer,
        };
        let stopped = || Problem::internal(&"the existence checks stopped");
        self.checks.send(check).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Takes whatever checks are queued whenever a statement may start, and runs it.
async fn answer_in_batches<F, Fut>(
    fetch: Arc<F>,
    mut queue: mpsc::Receiver<Check>,
    in_flight: usize,
) where
    F: Fn(Arc<str>, Vec<Uuid>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Found, Problem>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(check) => batch.push(check),
                Err(_) => break,
            }
        }
        metrics::histogram!("command_lookup_batch_size").record(batch.len() as f64);
        let fetch = Arc::clone(&fetch);
        tokio::spawn(async move {
            answer(fetch.as_ref(), batch).await;
            drop(slot);
        });
    }
}

/// Answers each check of `batch`, one statement per read schema among them (one, but around a
/// switch of generations).
async fn answer<F, Fut>(fetch: &F, mut batch: Vec<Check>)
where
    F: Fn(Arc<str>, Vec<Uuid>) -> Fut,
    Fut: Future<Output = Result<Found, Problem>>,
{
    while let Some(schema) = batch.first().map(|check| Arc::clone(&check.schema)) {
        let (these, rest): (Vec<Check>, Vec<Check>) =
            batch.into_iter().partition(|check| check.schema == schema);
        batch = rest;
        let mut ids: Vec<Uuid> = these.iter().map(|check| check.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let found = fetch(schema, ids).await;
        for check in these {
            let answer = match &found {
                Ok(found) => Ok(found.get(&check.id).copied()),
                Err(problem) => Err(problem.clone()),
            };
            // A request that stopped waiting needs no answer.
            let _ = check.answer.send(answer);
        }
    }
}

/// A fetch that runs `sql(schema)` (two `uuid` columns: the id, what it maps to) with the ids
/// as `$1`.
fn fetcher(
    pool: &Pool,
    sql: fn(&str) -> String,
) -> impl Fn(Arc<str>, Vec<Uuid>) -> Fetched + Send + Sync + 'static {
    let pool = pool.clone();
    move |schema, ids| {
        let pool = pool.clone();
        Box::pin(async move {
            let client = pool.get().await?;
            let statement = client.prepare_cached(&sql(&schema)).await?;
            let rows = client.query(&statement, &[&ids]).await?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each batch a fetch was given: its schema and ids.
    type Batches = Arc<Mutex<Vec<(String, Vec<Uuid>)>>>;

    /// A fetch that records each batch it is given and waits for `gate` before answering from
    /// `known`; or fails, in the schema `broken`.
    #[derive(Clone)]
    struct Recorder {
        batches: Batches,
        gate: Arc<Semaphore>,
        known: Arc<Found>,
    }

    impl Recorder {
        fn new(known: Found) -> Recorder {
            Recorder {
                batches: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
                known: Arc::new(known),
            }
        }

        fn coalescer(&self, in_flight: usize) -> Coalescer {
            let recorder = self.clone();
            Coalescer::start(
                move |schema: Arc<str>, ids: Vec<Uuid>| {
                    let recorder = recorder.clone();
                    async move {
                        recorder
                            .batches
                            .lock()
                            .expect("not poisoned")
                            .push((schema.to_string(), ids.clone()));
                        let _pass = recorder.gate.acquire().await.expect("open");
                        if schema.as_ref() == "broken" {
                            return Err(Problem::database_unavailable());
                        }
                        Ok(ids
                            .iter()
                            .filter_map(|id| recorder.known.get(id).map(|to| (*id, *to)))
                            .collect())
                    }
                },
                in_flight,
            )
        }

        fn batches(&self) -> Vec<(String, Vec<Uuid>)> {
            self.batches.lock().expect("not poisoned").clone()
        }

        async fn wait_for_batches(&self, count: usize) {
            while self.batches().len() < count {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn checks_that_arrive_while_one_runs_go_together_and_each_gets_its_own_answer() {
        let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        // Even ids exist, each mapping to an id of its own.
        let known: Found = ids
            .iter()
            .step_by(2)
            .map(|id| (*id, Uuid::now_v7()))
            .collect();
        let recorder = Recorder::new(known.clone());
        let coalescer = recorder.coalescer(1);

        // The first check goes alone, at once.
        let first = tokio::spawn({
            let coalescer = coalescer.clone();
            let id = ids[0];
            async move { coalescer.check("read_g1", id).await }
        });
        recorder.wait_for_batches(1).await;
        // The rest arrive while it runs (one id twice), and wait.
        let mut rest = Vec::new();
        for id in ids[1..].iter().chain([&ids[1]]) {
            let coalescer = coalescer.clone();
            let id = *id;
            rest.push(tokio::spawn(
                async move { coalescer.check("read_g1", id).await },
            ));
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(recorder.batches().len(), 1, "nothing else started");
        recorder.gate.add_permits(2);

        assert_eq!(
            first.await.expect("ran").expect("answered"),
            known.get(&ids[0]).copied()
        );
        let answers: Vec<Option<Uuid>> = {
            let mut answers = Vec::new();
            for check in rest {
                answers.push(check.await.expect("ran").expect("answered"));
            }
            answers
        };
        for (id, answer) in ids[1..].iter().chain([&ids[1]]).zip(&answers) {
            assert_eq!(*answer, known.get(id).copied(), "the answer for {id}");
        }
        let batches = recorder.batches();
        assert_eq!(batches.len(), 2, "one statement for the 20 that waited");
        let mut expected: Vec<Uuid> = ids[1..].to_vec();
        expected.sort_unstable();
        assert_eq!(batches[1], ("read_g1".to_owned(), expected));
    }

    #[tokio::test]
    async fn each_schema_gets_its_statement_and_a_failure_reaches_only_its_checks() {
        let id = Uuid::now_v7();
        let author = Uuid::now_v7();
        let recorder = Recorder::new(Found::from([(id, author)]));
        let coalescer = recorder.coalescer(1);
        let blocker = tokio::spawn({
            let coalescer = coalescer.clone();
            async move { coalescer.check("read_g1", Uuid::now_v7()).await }
        });
        recorder.wait_for_batches(1).await;
        let checks: Vec<_> = ["read_g1", "broken", "read_g2"]
            .into_iter()
            .map(|schema| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { coalescer.check(schema, id).await })
            })
            .collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        recorder.gate.add_permits(4);
        assert_eq!(blocker.await.expect("ran").expect("answered"), None);
        let mut answers = Vec::new();
        for check in checks {
            answers.push(check.await.expect("ran"));
        }
        assert_eq!(answers[0].as_ref().expect("answered"), &Some(author));
        assert_eq!(
            answers[1].as_ref().expect_err("failed").code(),
            "database_unavailable"
        );
        assert_eq!(answers[2].as_ref().expect("answered"), &Some(author));
        let schemas: Vec<String> = recorder
            .batches()
            .into_iter()
            .map(|(schema, _)| schema)
            .collect();
        assert_eq!(schemas, ["read_g1", "read_g1", "broken", "read_g2"]);
    }
}
