//! Schema fuzzing: [schemathesis](https://schemathesis.readthedocs.io) against each service's own
//! OpenAPI document (`/openapi.json`), with every check (`--checks all`).
//!
//! The test starts a fresh Chronicle on the harness (its own database and topic), makes data to
//! act on (two users, posts, a reply, a like and follows; the first user's token authenticates
//! the fuzzed commands, and half of the generated user ids, post ids and handles are replaced by
//! these, so that requests get past "no such thing"), then runs the schemathesis CLI against the
//! command API and the query API in turn. It fails, with every reason at once, when:
//!
//! - schemathesis reports a failure or an error (read from its JUnit report, with the failures'
//!   text), exits non-zero, or does not finish within the time limit;
//! - a service served fewer requests than `CHRONICLE_FUZZ_MIN_CASES` (counted from its own
//!   `/metrics`): the run did not fuzz enough to mean anything;
//! - the projector does not catch up (`projector status --json` reports `total_lag` 0) within
//!   60 s after the run, or sets any event aside as a dead letter: an accepted command whose
//!   event cannot be projected is a defect the HTTP checks cannot see;
//! - a service panicked or exited.
//!
//! The failures the documents cannot express (answers that depend on state, such as a reused
//! `Idempotency-Key`) are dropped by the hook in `tests/fuzz/hooks.py`, one by one, each with
//! why; nothing else is.
//!
//! It is `#[ignore]`d because it takes minutes: `script/fuzz` (by hand) and the last phase of
//! `script/test` run it with `--run-ignored only -E 'test(/^fuzz::/)'`. schemathesis comes from
//! `script/fuzz`, which installs it, pinned, into a virtualenv.
//!
//! Knobs (environment):
//!
//! - `CHRONICLE_FUZZ_SEED`, else `CHRONICLE_TEST_SEED` (decimal, or hexadecimal with `0x`), else
//!   random: schemathesis' seed and the made data's names; printed, to replay a run.
//! - `CHRONICLE_FUZZ_EXAMPLES`: cases per operation in the fuzzing phase (default 260; with the
//!   coverage and stateful phases about 4,000 requests per service).
//! - `CHRONICLE_FUZZ_MIN_CASES`: fewer requests served by a service fails (default 2,000).
//! - `CHRONICLE_FUZZ_TIMEOUT_SECS`: time limit of each schemathesis run (default 210).
//! - `CHRONICLE_SCHEMATHESIS`: the schemathesis executable (default
//!   `~/.cache/chronicle/schemathesis-4.32.5/bin/schemathesis`, or under `CHRONICLE_CACHE`).
//!
//! Schemathesis' output, config, reports and the service logs are kept under the test's log
//! directory (`target/e2e-logs/<database>/`).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{NO_POSITIONS, Rng, TestApp, TestUser, test_seed, with_positions};

/// The schemathesis release the documents are checked with (`script/fuzz` installs it).
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// How long the projector may take to apply the last fuzzed command's event.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

/// The knobs of a run, from the environment.
struct Knobs {
    seed: u64,
    examples: u64,
    min_cases: u64,
    timeout: Duration,
    schemathesis: PathBuf,
}

impl Knobs {
    fn from_env() -> Knobs {
        let seed = match number("CHRONICLE_FUZZ_SEED") {
            Some(seed) => seed,
            // Short enough to type: a 32-bit seed.
            None => test_seed().unwrap_or_else(|| Rng::from_entropy().next_u64() >> 32),
        };
        let schemathesis = std::env::var_os("CHRONICLE_SCHEMATHESIS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let cache = std::env::var_os("CHRONICLE_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        let home = std::env::var_os("HOME").expect("HOME is set");
                        Path::new(&home).join(".cache/chronicle")
                    });
                cache.join(format!(
                    "schemathesis-{SCHEMATHESIS_VERSION}/bin/schemathesis"
                ))
            });
        Knobs {
            seed,
            examples: number("CHRONICLE_FUZZ_EXAMPLES").unwrap_or(260),
            min_cases: number("CHRONICLE_FUZZ_MIN_CASES").unwrap_or(2_000),
            timeout: Duration::from_secs(number("CHRONICLE_FUZZ_TIMEOUT_SECS").unwrap_or(210)),
            schemathesis,
        }
    }
}

/// The number in environment variable `name` (decimal, or hexadecimal with `0x`), if set.
fn number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// What the run made for the fuzzer to find.
struct Seeded {
    me: TestUser,
    other: TestUser,
    posts: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "schema fuzzing takes minutes: script/fuzz and the last phase of script/test run it"]
async fn both_services_answer_as_their_documents_say() {
    let knobs = Knobs::from_env();
    println!(
        "CHRONICLE_FUZZ_SEED={} (set it to replay this run)",
        knobs.seed
    );
    check_schemathesis(&knobs.schemathesis);
    // A generated position of the right shape is almost never reached: answer it quickly.
    let app = TestApp::builder()
        .partitions(3)
        .consistency_wait_ms(25)
        .spawn()
        .await;
    let mut rng = Rng::seeded(knobs.seed);
    let seeded = seed(&app, &mut rng).await;
    let dir = app.log_dir().join("fuzz");
    std::fs::create_dir_all(&dir).expect("create the fuzz directory");
    let config = write_config(&dir, &seeded);

    let mut problems = Vec::new();
    let mut summary = String::new();
    for (service, url) in [
        ("command-api", app.command_url.clone()),
        ("query-api", app.query_url.clone()),
    ] {
        let served_before = requests_served(&app, &url).await;
        let run = run_schemathesis(&knobs, &dir, &config, service, &url, &seeded.me.token).await;
        let cases = requests_served(&app, &url).await - served_before;
        let _ = writeln!(
            summary,
            "    {service:<11} {cases:>6} requests {:>5.0}s  {} operations, {} failed; \
             dropped by tests/fuzz/hooks.py: {}",
            run.took.as_secs_f64(),
            run.report.operations,
            run.report.failed,
            run.dropped.trim()
        );
        problems.extend(run.problems(service));
        if cases < knobs.min_cases {
            problems.push(format!(
                "{service}: schemathesis sent {cases} requests, fewer than \
                 CHRONICLE_FUZZ_MIN_CASES={}",
                knobs.min_cases
            ));
        }
    }
    println!(
        "fuzzed with seed {} ({} examples per operation):\n{summary}",
        knobs.seed, knobs.examples
    );

    problems.extend(projector_problems(&app).await);
    problems.extend(panics(app.log_dir()));
    app.assert_services_alive();
    assert!(
        problems.is_empty(),
        "schema fuzzing failed (replay with CHRONICLE_FUZZ_SEED={}; schemathesis output and \
         service logs in {}):\n\n{}",
        knobs.seed,
        app.log_dir().display(),
        problems.join("\n\n")
    );
}

/// Panics unless `path` is the pinned schemathesis.
fn check_schemathesis(path: &Path) {
    let output = Command::new(path).arg("--version").output();
    let version = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        _ => panic!(
            "schemathesis is not at {} (CHRONICLE_SCHEMATHESIS): run script/fuzz, which \
             installs schemathesis {SCHEMATHESIS_VERSION} there and runs this test",
            path.display()
        ),
    };
    assert!(
        version.trim().ends_with(SCHEMATHESIS_VERSION),
        "{} is {:?}, not schemathesis {SCHEMATHESIS_VERSION}: remove its virtualenv and run \
         script/fuzz again",
        path.display(),
        version.trim()
    );
}

/// Two users, a post each, a reply, a like and follows both ways; waits until the read models
/// show them, so that the fuzzer's first requests find them.
async fn seed(app: &TestApp, rng: &mut Rng) -> Seeded {
    let handle = |rng: &mut Rng| format!("fuzz_{:012x}", rng.next_u64() >> 16);
    let me = app.register_user(&handle(rng), "Fuzz").await;
    let other = app.register_user(&handle(rng), "Other").await;
    let mine = app
        .publish_post(&me, "A post for the fuzzer to find.")
        .await;
    let theirs = app.publish_post(&other, "Not yours to delete.").await;
    let mut positions = vec![
        me.position.clone(),
        other.position.clone(),
        mine.position.clone(),
        theirs.position.clone(),
    ];
    app.wait_for(&positions).await;

    let reply = app
        .command(Method::POST, "/v1/posts")
        .bearer_auth(&me.token)
        .json(&json!({"body": "A reply.", "reply_to": theirs.id}));
    let reply = app
        .send(with_positions(
            reply,
            std::slice::from_ref(&theirs.position),
        ))
        .await;
    reply.assert_status(202);
    let like = app.like(&me.token, &theirs.id, NO_POSITIONS).await;
    let follow = app.follow(&me.token, &other.id, NO_POSITIONS).await;
    let followed = app.follow(&other.token, &me.id, NO_POSITIONS).await;
    for resp in [&reply, &like, &follow, &followed] {
        resp.assert_status(202);
        positions.push(resp.str_field("position"));
    }
    app.wait_for(&positions).await;
    Seeded {
        posts: vec![mine.id, theirs.id, reply.str_field("post_id")],
        me,
        other,
    }
}

/// Writes the schemathesis config of the run: the hooks, and dictionaries of the made ids and
/// handles that replace half of the generated ones.
fn write_config(dir: &Path, seeded: &Seeded) -> PathBuf {
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/hooks.py");
    assert!(hooks.is_file(), "{} is missing", hooks.display());
    let list = |values: &[&str]| {
        values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let posts: Vec<&str> = seeded.posts.iter().map(String::as_str).collect();
    let config = format!(
        "# Written by tests/e2e/fuzz.rs for one run.\n\
         hooks = {hooks:?}\n\n\
         [dictionaries.users]\nvalues = [{users}]\n\n\
         [dictionaries.posts]\nvalues = [{posts}]\n\n\
         [dictionaries.handles]\nvalues = [{handles}]\n\n\
         [parameters]\n\
         \"path.user_id\" = {{ dictionary = \"users\", probability = 0.5 }}\n\
         \"path.post_id\" = {{ dictionary = \"posts\", probability = 0.5 }}\n\
         \"path.handle\" = {{ dictionary = \"handles\", probability = 0.5 }}\n",
        hooks = hooks.display().to_string(),
        users = list(&[&seeded.me.id, &seeded.other.id]),
        posts = list(&posts),
        handles = list(&[&seeded.me.handle, &seeded.other.handle]),
    );
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, config).expect("write the schemathesis config");
    path
}

/// The requests a service has served, from its `/metrics` (`http_requests_total`).
async fn requests_served(app: &TestApp, base_url: &str) -> u64 {
    let text = app
        .client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    let total: f64 = text
        .lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap_or_default();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("a metrics line without a number: {line:?}"))
        })
        .sum();
    total as u64
}

/// One schemathesis run against one service.
struct Run {
    exit: Option<std::process::ExitStatus>,
    took: Duration,
    timeout: Duration,
    report: JUnit,
    /// What the hook dropped, by rule (JSON), as it wrote it.
    dropped: String,
    log: PathBuf,
}

impl Run {
    /// Why this run fails, if it does.
    fn problems(&self, service: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let log = self.log.display();
        match self.exit {
            None => problems.push(format!(
                "{service}: schemathesis did not finish within {}s \
                 (CHRONICLE_FUZZ_TIMEOUT_SECS); its output: {log}",
                self.timeout.as_secs()
            )),
            Some(status) if !status.success() && self.report.failed == 0 => {
                problems.push(format!(
                    "{service}: schemathesis exited with {status} without a failure in its \
                     report; its output: {log}"
                ));
            }
            Some(_) => {}
        }
        if self.exit.is_some() && self.report.operations == 0 {
            problems.push(format!(
                "{service}: schemathesis' JUnit report names no operation; its output: {log}"
            ));
        }
        for (operation, text) in &self.report.failures {
            problems.push(format!("{service}: {operation}:\n{text}"));
        }
        problems
    }
}

/// Runs schemathesis with every check against `base_url`'s document, with a time limit.
async fn run_schemathesis(
    knobs: &Knobs,
    dir: &Path,
    config: &Path,
    service: &str,
    base_url: &str,
    token: &str,
) -> Run {
    let report_dir = dir.join(format!("report-{service}"));
    let _ = std::fs::remove_dir_all(&report_dir);
    std::fs::create_dir_all(&report_dir).expect("create the report directory");
    let log = dir.join(format!("schemathesis-{service}.log"));
    let dropped = dir.join(format!("dropped-{service}.json"));
    let mut command = Command::new(&knobs.schemathesis);
    command
        .arg("--config-file")
        .arg(config)
        .args([
            "run",
            &format!("{base_url}/openapi.json"),
            "--checks",
            "all",
        ])
        .args(["--max-examples", &knobs.examples.to_string()])
        .args(["--seed", &knobs.seed.to_string()])
        // One worker: with more, hypothesis parses sources in several threads, which CPython
        // 3.11 can fail with "SystemError: AST constructor recursion depth mismatch".
        .args(["--workers", "1", "--request-timeout", "15"])
        // A live stream does not end, so every request to one would end by the timeout;
        // tests/e2e/streams.rs and browser.rs test them. A logout would end the session of the
        // token every other request uses; tests/e2e/accounts.rs tests it.
        .args(["--exclude-path-regex", "/stream$|^/v1/sessions/current$"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report_dir)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        // Its cache of failures to replay (.schemathesis/) goes next to the reports.
        .current_dir(&report_dir)
        .env("CHRONICLE_FUZZ_DROPPED", &dropped)
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("create the schemathesis log"))
        .stderr(File::create(log.with_extension("stderr.log")).expect("create the stderr log"));
    println!(
        "fuzzing {service}: {} --config-file {} run {base_url}/openapi.json --checks all \
         --max-examples {} --seed {} --header 'Authorization: Bearer <token>' (output: {})",
        knobs.schemathesis.display(),
        config.display(),
        knobs.examples,
        knobs.seed,
        log.display()
    );
    let timeout = knobs.timeout;
    let started = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start schemathesis");
        loop {
            if let Some(status) = child.try_wait().expect("wait for schemathesis") {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("the schemathesis runner panicked");
    let took = started.elapsed();
    let report = match exit {
        Some(_) => JUnit::read(&report_dir),
        None => JUnit::default(),
    };
    Run {
        exit,
        took,
        timeout,
        report,
        dropped: std::fs::read_to_string(&dropped).unwrap_or_default(),
        log,
    }
}

/// What a schemathesis JUnit report says: one test case per operation (and one for the
/// stateful phase), with a `<failure>` or `<error>` element for each that failed.
#[derive(Debug, Default)]
struct JUnit {
    operations: usize,
    failed: usize,
    /// (operation, the failure's text) for each failure or error.
    failures: Vec<(String, String)>,
}

impl JUnit {
    /// Reads the one `junit*.xml` report in `dir`; panics if there is none.
    fn read(dir: &Path) -> JUnit {
        let path = std::fs::read_dir(dir)
            .expect("read the report directory")
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("junit") && name.ends_with(".xml")
            })
            .unwrap_or_else(|| panic!("schemathesis wrote no JUnit report in {}", dir.display()));
        let xml = std::fs::read_to_string(&path).expect("read the JUnit report");
        JUnit::parse(&xml)
    }

    fn parse(xml: &str) -> JUnit {
        let mut report = JUnit::default();
        for case in xml.split("<testcase ").skip(1) {
            report.operations += 1;
            let name = attribute(case, "name").unwrap_or_else(|| "?".to_owned());
            let case = case.split("</testcase>").next().unwrap_or(case);
            let mut failed = false;
            for element in ["failure", "error"] {
                for body in case.split(&format!("<{element}")).skip(1) {
                    failed = true;
                    let text = body
                        .split_once('>')
                        .map(|(_, rest)| rest)
                        .unwrap_or_default();
                    let text = text.split(&format!("</{element}>")).next().unwrap_or(text);
                    report.failures.push((name.clone(), unescape(text.trim())));
                }
            }
            if failed {
                report.failed += 1;
            }
        }
        report
    }
}

/// The value of XML attribute `name` in the start tag at the beginning of `element`.
fn attribute(element: &str, name: &str) -> Option<String> {
    let tag = element.split('>').next()?;
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// XML text with its entities resolved (the predefined ones and numeric references).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Waits (bounded) until `projector status --json` reports no lag, then checks that no event
/// became a dead letter. Any output it cannot read is a problem, never the end of the wait.
async fn projector_problems(app: &TestApp) -> Vec<String> {
    let started = Instant::now();
    let status = loop {
        let status = match projector_status(app).await {
            Ok(status) => status,
            Err(problem) => return vec![problem],
        };
        let Some(lag) = status["total_lag"].as_i64() else {
            return vec![format!(
                "`projector status --json` has no numeric total_lag: {status}"
            )];
        };
        if lag == 0 {
            break status;
        }
        if started.elapsed() >= CATCH_UP_DEADLINE {
            return vec![format!(
                "the projector still lagged {lag} event(s) behind the log {}s after the fuzzing \
                 ended (`projector status --json`: {status})",
                CATCH_UP_DEADLINE.as_secs()
            )];
        }
        // The projector applies on its own; this only paces the status reads.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let counts = &status["dead_letters"];
    let (Some(open), Some(recorded)) = (counts["open"].as_i64(), counts["recorded"].as_i64())
    else {
        return vec![format!(
            "`projector status --json` has no dead letter counts: {status}"
        )];
    };
    if open == 0 && recorded == 0 {
        return Vec::new();
    }
    let (_, list, _) = app.projector_cli(&["dead-letters", "list", "--all"]).await;
    vec![format!(
        "the projector set aside events of accepted commands as dead letters ({open} open, \
         {recorded} recorded):\n{list}"
    )]
}

/// `projector status --json`, parsed.
async fn projector_status(app: &TestApp) -> Result<Value, String> {
    let (ok, stdout, stderr) = app.projector_cli(&["status", "--json"]).await;
    if !ok {
        return Err(format!(
            "`projector status --json` failed: {}",
            stderr.trim()
        ));
    }
    serde_json::from_str(stdout.trim())
        .map_err(|err| format!("`projector status --json` printed no JSON ({err}): {stdout:?}"))
}

/// The service logs of `dir` that record a panic.
fn panics(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("read the log directory")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log")
            && std::fs::read_to_string(&path).is_ok_and(|log| log.contains("panicked"))
        {
            problems.push(format!("a service panicked: see {}", path.display()));
        }
    }
    problems
}

#[test]
fn junit_failures_are_read_with_their_operation_and_text() {
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites errors="0" failures="1" skipped="0" tests="2" time="1.0">
  <testsuite name="schemathesis" errors="0" failures="1" skipped="0" tests="2" time="1.0">
    <testcase name="GET /v1/feed" time="0.1">
      <failure type="failure" message="ST202">- ST202 Schema-valid request rejected

    `{&quot;code&quot;:&quot;invalid_position&quot;}` &lt;x&gt; &#10;</failure>
    </testcase>
    <testcase name="GET /v1/posts/{post_id}" time="0.1">
    </testcase>
  </testsuite>
</testsuites>"#;
    let report = JUnit::parse(xml);
    assert_eq!(report.operations, 2);
    assert_eq!(report.failed, 1);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].0, "GET /v1/feed");
    assert!(
        report.failures[0]
            .1
            .contains(r#"`{"code":"invalid_position"}` <x>"#),
        "{:?}",
        report.failures[0].1
    );
}
