//! The live streams as a browser reads them: a real `EventSource` in Debian's headless Chromium
//! (`/usr/bin/chromium`), driven by playwright-core from `tests/browser/eventsource.mjs`, which
//! reports every event the page receives as a JSON line. The page is opened on the query API
//! itself, so the streams are same-origin. The `EventSource` reconnects by itself, with
//! `Last-Event-ID`, after the query API is killed and started again, and reads the caller's
//! notifications with `?access_token=`, as a browser that cannot set headers does.
//!
//! script/test installs Chromium and playwright-core (script/lib.sh, `ensure_browser`) and sets
//! `CHRONICLE_BROWSER_DIR`; without them these tests fail, saying what to run.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{TestApp, TestPost};

/// How long any one wait for the browser may take.
const WITHIN: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const NODE: &str = "/usr/bin/node";

/// One message the page's `EventSource` dispatched.
#[derive(Debug)]
struct Received {
    event: String,
    data: Value,
    last_event_id: String,
}

/// `tests/browser/eventsource.mjs` running Chromium, with a page on the query API. The node
/// process (and with it Chromium) is stopped on drop.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout, line by line (a reader thread feeds it; closed when the script exits).
    lines: mpsc::UnboundedReceiver<Value>,
    log: PathBuf,
}

/// `CHRONICLE_BROWSER_DIR`, checked, with Chromium and node: a missing piece fails the test,
/// saying what to run.
fn browser_dir() -> PathBuf {
    const HOW: &str = "run the tests with script/test, which installs Chromium (apt-get) and \
                       playwright-core (npm ci) with script/lib.sh ensure_browser and sets \
                       CHRONICLE_BROWSER_DIR; or run script/bootstrap, then \
                       export CHRONICLE_BROWSER_DIR=\"${CHRONICLE_CACHE:-$HOME/.cache/chronicle}/browser\"";
    let dir = std::env::var_os("CHRONICLE_BROWSER_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("CHRONICLE_BROWSER_DIR is not set: {HOW}"));
    let playwright = dir.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "playwright-core is not installed at {}: {HOW}",
        playwright.display()
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: {HOW}"
    );
    assert!(Path::new(NODE).is_file(), "{NODE} is missing: {HOW}");
    dir
}

impl Browser {
    /// Starts the script against `app`'s query API and waits for its page to load.
    async fn launch(app: &TestApp) -> Browser {
        let dir = browser_dir();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/eventsource.mjs");
        let log = app.log_dir().join("browser.log");
        let stderr =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = Command::new(NODE)
            .arg(&script)
            .env("QUERY_URL", &app.query_url)
            .env("CHRONICLE_BROWSER_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NODE} {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({ "fatal": format!("not JSON: {line}") }));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        let mut browser = Browser {
            stdin: child.stdin.take(),
            child,
            lines,
            log,
        };
        let ready = browser.next_line("the page to load").await;
        assert_eq!(ready, json!({ "ready": true }), "the browser script said");
        browser
    }

    /// The next line the script prints, within [`WITHIN`]; fails on a `fatal` line or an exit.
    async fn next_line(&mut self, waiting_for: &str) -> Value {
        let line = tokio::time::timeout(WITHIN, self.lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the browser reported nothing within {WITHIN:?} while waiting for \
                     {waiting_for} (its log: {})",
                    self.log.display()
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "the browser script exited while waiting for {waiting_for} (its log: {})",
                    self.log.display()
                )
            });
        if let Some(fatal) = line.get("fatal") {
            panic!(
                "the browser script failed: {fatal} (its log: {})",
                self.log.display()
            );
        }
        line
    }

    /// Opens `new EventSource(path)` in the page, listening to `events`, and waits for it to
    /// open.
    async fn open(&mut self, path: &str, events: &[&str]) {
        let command = json!({ "open": path, "events": events });
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .expect("cannot write to the browser script");
        self.expect_state("open", &format!("EventSource({path}) to open"))
            .await;
    }

    /// Waits for the `EventSource` to report `state` (`open` or `error`), with no message
    /// before it. While waiting for `open`, errors of failed attempts to reconnect (readyState
    /// 0, CONNECTING) are skipped; a CLOSED EventSource (readyState 2: it gave up) fails.
    async fn expect_state(&mut self, state: &str, waiting_for: &str) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < WITHIN,
                "the EventSource did not report {state} within {WITHIN:?} while waiting for \
                 {waiting_for} (the browser's log: {})",
                self.log.display()
            );
            let line = self.next_line(waiting_for).await;
            assert!(
                line["readyState"] != 2,
                "the EventSource closed for good (readyState 2) while waiting for {waiting_for}"
            );
            if state == "open" && line["state"] == "error" {
                continue;
            }
            assert_eq!(
                line["state"], state,
                "waiting for {waiting_for}, the browser reported {line}"
            );
            return;
        }
    }

    /// The next `count` messages; a state change on the way fails.
    async fn messages(&mut self, count: usize, waiting_for: &str) -> Vec<Received> {
        let mut received = Vec::new();
        while received.len() < count {
            let line = self
                .next_line(&format!(
                    "{waiting_for} ({} of {count} received: {received:?})",
                    received.len()
                ))
                .await;
            let (Some(event), Some(data), Some(last_event_id)) = (
                line["event"].as_str(),
                line["data"].as_str(),
                line["lastEventId"].as_str(),
            ) else {
                panic!("waiting for {waiting_for}, the browser reported {line}");
            };
            received.push(Received {
                event: event.to_owned(),
                data: serde_json::from_str(data)
                    .unwrap_or_else(|e| panic!("the data of {line} is not JSON: {e}")),
                last_event_id: last_event_id.to_owned(),
            });
        }
        received
    }
}

impl Drop for Browser {
    /// Closes stdin (the script closes Chromium and exits), then kills what still runs.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `received` are `post` messages of exactly `posts` (in any order, each once),
/// each with a resume id.
fn assert_posts(received: &[Received], posts: &[&TestPost], what: &str) {
    let mut got: Vec<&str> = received
        .iter()
        .map(|message| {
            assert_eq!(message.event, "post", "{what}: {message:?}");
            assert!(
                !message.last_event_id.is_empty(),
                "{what}: a message without an id: {message:?}"
            );
            message.data["post_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: a post without post_id: {message:?}"))
        })
        .collect();
    let mut expected: Vec<&str> = posts.iter().map(|post| post.id.as_str()).collect();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "{what}: the post ids received");
}

#[tokio::test]
async fn an_eventsource_in_chromium_receives_posts_and_resumes_after_a_query_api_restart() {
    // Heartbeats (with ids) between the messages: the browser's resume id moves with them too.
    let app = TestApp::builder()
        .env("CHRONICLE_STREAM_HEARTBEAT_MS", "500")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let mut browser = Browser::launch(&app).await;
    browser
        .open("/v1/feed/stream", &["post", "post_deleted"])
        .await;

    // Live: three posts, each received once.
    let mut first = Vec::new();
    for n in 1..=3 {
        first.push(app.publish_post(&alice, &format!("live post {n}")).await);
    }
    let received = browser.messages(3, "the first three posts").await;
    assert_posts(&received, &first.iter().collect::<Vec<_>>(), "live");
    for message in &received {
        assert_eq!(
            message.data["author"]["user_id"],
            alice.id.as_str(),
            "{message:?}"
        );
    }

    // The query API dies: the EventSource sees the error and keeps reconnecting by itself.
    app.kill_query_api();
    browser
        .expect_state("error", "the EventSource to see the query API die")
        .await;
    let mut second = Vec::new();
    for n in 4..=6 {
        second.push(
            app.publish_post(&alice, &format!("post {n}, query API down"))
                .await,
        );
    }
    // `wait_for` asks the query API, so it can only wait once the query API is back.
    app.start_query_api().await;
    let positions: Vec<String> = second.iter().map(|post| post.position.clone()).collect();
    app.wait_for(&positions).await;
    browser
        .expect_state("open", "the EventSource to reconnect by itself")
        .await;
    let received = browser
        .messages(3, "the three posts published while the query API was down")
        .await;
    assert_posts(
        &received,
        &second.iter().collect::<Vec<_>>(),
        "after the reconnect (Last-Event-ID)",
    );

    // Nothing else was queued before a post published now: no duplicate and no extra message.
    let last = app.publish_post(&alice, "after the restart").await;
    let received = browser
        .messages(1, "the post published after the restart")
        .await;
    assert_posts(&received, &[&last], "after the restart");
    app.assert_services_alive();
}

#[tokio::test]
async fn an_eventsource_reads_the_callers_notifications_with_an_access_token() {
    let app = TestApp::builder()
        .env("CHRONICLE_STREAM_HEARTBEAT_MS", "500")
        .spawn()
        .await;
    let alice = app.register_user("alice", "Alice").await;
    let bob = app.register_user("bob", "Bob").await;
    let post = app.publish_post(&alice, "like this").await;
    let mut browser = Browser::launch(&app).await;
    browser
        .open(
            &format!("/v1/me/notifications/stream?access_token={}", alice.token),
            &["notification"],
        )
        .await;

    let at_post = [
        alice.position.clone(),
        bob.position.clone(),
        post.position.clone(),
    ];
    app.like(&bob.token, &post.id, &at_post)
        .await
        .assert_status(202);

    let received = browser.messages(1, "alice's notification").await;
    let notification = &received[0];
    assert_eq!(notification.event, "notification", "{notification:?}");
    assert!(!notification.last_event_id.is_empty(), "{notification:?}");
    assert_eq!(notification.data["kind"], "liked", "{notification:?}");
    assert_eq!(
        notification.data["actor"]["user_id"],
        bob.id.as_str(),
        "{notification:?}"
    );
    assert_eq!(
        notification.data["actor"]["handle"],
        bob.handle.as_str(),
        "{notification:?}"
    );
    assert_eq!(
        notification.data["post_id"],
        post.id.as_str(),
        "{notification:?}"
    );
    assert_eq!(notification.data["read"], false, "{notification:?}");
    app.assert_services_alive();
}
