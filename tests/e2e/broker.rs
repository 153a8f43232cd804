//! A private Kafka-protocol broker (tansu) for one test, which the test may stop and start:
//! the broker `script/test` runs is shared by every test.
//!
//! `script/test` exports `CHRONICLE_TEST_TANSU`, the path of the tansu binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private broker with its data in a directory of its own; killed and deleted on drop.
pub(crate) struct PrivateBroker {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    process: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker in `<root>/<name>` on a free port (blocking until it accepts connections).
    pub(crate) fn start(root: &Path, name: &str) -> PrivateBroker {
        let binary = PathBuf::from(std::env::var("CHRONICLE_TEST_TANSU").unwrap_or_else(|_| {
            panic!(
                "CHRONICLE_TEST_TANSU is not set: it names the tansu binary (script/test sets it)"
            )
        }));
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let port = chronicle_tests::free_port().expect("a free port");
        let mut broker = PrivateBroker {
            binary,
            dir,
            port,
            process: None,
        };
        broker.start_again();
        broker
    }

    /// The bootstrap address.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker the hard way (SIGKILL): a crash, or a machine gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the broker again on the same port and data (blocking until it accepts connections).
    pub(crate) fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("the broker's log file");
        let url = format!("tcp://{}", self.address());
        let process = Command::new(&self.binary)
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .args([
                "broker",
                "--cluster-id",
                "chronicle",
                "--listener-url",
                &url,
            ])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the broker's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private broker did not listen within 30 s (log: {})",
                self.dir.join("broker.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        // A failed test keeps the directory (and the log in it) for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
