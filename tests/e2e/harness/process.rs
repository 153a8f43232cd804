//! The service processes: started from the built binaries with the test's environment, their
//! output kept, killed on drop.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use super::*;

/// One running service process. Killed (SIGKILL) and reaped on drop.
pub(super) struct ServiceProcess {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) url: String,
    pub(super) log_path: PathBuf,
}

impl ServiceProcess {
    pub(super) fn kill(&mut self) {
        // Fails only when the process already exited, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a service needs to start: the binary and the environment shared by every service.
#[derive(Clone)]
pub(super) struct Launcher {
    pub(super) harness: HarnessEnv,
    pub(super) env: Vec<(String, String)>,
    pub(super) log_dir: PathBuf,
    pub(super) counters: Arc<Mutex<HashMap<String, usize>>>,
}

impl Launcher {
    /// A command for the binary at `path` with this test's environment and nothing inherited
    /// that could point it elsewhere.
    pub(super) fn command(&self, path: &Path) -> Command {
        let mut command = Command::new(path);
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("CHRONICLE_")
                || key_str.starts_with("KAFKA_")
                || key_str == "DATABASE_URL"
                || key_str == "RUST_LOG"
            {
                command.env_remove(&key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs `binary` with `args` to completion (a CLI, not a service) in the services'
    /// environment with `extra` variables on top, and returns what it printed and whether it
    /// succeeded.
    pub(super) fn run_with(
        &self,
        binary: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> std::process::Output {
        let path = self.harness.binary(binary);
        let mut command = self.command(&path);
        command
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .envs(extra.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    /// Starts `binary` and returns once it printed `listening on http://…` (blocking).
    pub(super) fn start(&self, binary: &str) -> ServiceProcess {
        self.start_with(binary, &[])
    }

    /// [`Launcher::start`] with `extra` environment variables on top of the test's.
    pub(super) fn start_with(&self, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let path = self.harness.binary(binary);
        let index = {
            let mut counters = self.counters.lock().expect("launcher counters lock");
            let counter = counters.entry(binary.to_owned()).or_insert(0);
            let index = *counter;
            *counter += 1;
            index
        };
        let name = format!("{binary}-{index}");
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log_file = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log_path.display()));
        let log_file = Arc::new(Mutex::new(log_file));

        let mut command = self.command(&path);
        command
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));

        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        drain(Box::new(stdout), "", log_file.clone(), lines_tx.clone());
        drain(Box::new(stderr), "[stderr] ", log_file, lines_tx);

        let mut process = ServiceProcess {
            name: name.clone(),
            child,
            url: String::new(),
            log_path: log_path.clone(),
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut captured = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(url) = parse_listening_url(&line) {
                        process.url = url;
                        return process;
                    }
                    captured.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    process.kill();
                    panic!(
                        "{name} did not print `listening on http://…` within {}s (log: {}); \
                         its output so far:\n{}",
                        STARTUP_TIMEOUT.as_secs(),
                        log_path.display(),
                        captured.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = process.child.wait();
                    panic!(
                        "{name} exited before listening ({status:?}; log: {}); its output:\n{}",
                        log_path.display(),
                        captured.join("\n")
                    );
                }
            }
        }
    }
}

/// Copies every line of `stream` into the log file and into `lines` (while someone listens),
/// so the child's pipes never fill.
pub(super) fn drain(
    stream: Box<dyn Read + Send>,
    prefix: &'static str,
    log: Arc<Mutex<File>>,
    lines: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if let Ok(mut file) = log.lock() {
                        let _ = writeln!(file, "{prefix}{line}");
                    }
                    // Nobody listens once the service is up: the send fails and we keep draining.
                    let _ = lines.send(line);
                }
            }
        }
    });
}

/// Finds `http://host:port` after `listening on` in a log line (ANSI colours stripped).
pub(super) fn parse_listening_url(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let after = &plain[plain.find("listening on")?..];
    let start = after.find("http://")? + "http://".len();
    let address: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']' | '-'))
        .collect();
    address
        .contains(':')
        .then(|| format!("http://{}", address.trim_end_matches(['.', ':'])))
}

pub(super) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ parameters final-byte.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A directory for what a test keeps outside its database (`<target dir>/e2e-scratch`).
pub(crate) fn scratch_dir() -> PathBuf {
    HarnessEnv::from_env()
        .log_root
        .with_file_name("e2e-scratch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn listening_url_is_found_in_plain_and_coloured_lines() {
        assert_eq!(
            parse_listening_url(
                "2026-11-26T09:30:00Z  INFO command_api: listening on http://127.0.0.1:4242"
            ),
            Some("http://127.0.0.1:4242".to_owned())
        );
        assert_eq!(
            parse_listening_url(
                "\u{1b}[32m INFO\u{1b}[0m listening on http://127.0.0.1:51234 addr=x"
            ),
            Some("http://127.0.0.1:51234".to_owned())
        );
        assert_eq!(parse_listening_url("starting up"), None);
    }
}
