//! A private PostgreSQL server for one test, which the test may stop and start: the machine's
//! shared server is not ours to restart.
//!
//! `script/test` exports `CHRONICLE_TEST_PG_BINDIR`, the directory of `initdb` and `pg_ctl`.
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running private server; stopped and deleted on drop.
pub(crate) struct PrivatePostgres {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates a cluster in `target/e2e-pg/<name>` and starts it on a free port (blocking).
    pub(crate) fn start(log_root: &Path, name: &str) -> PrivatePostgres {
        let bindir = PathBuf::from(std::env::var("CHRONICLE_TEST_PG_BINDIR").unwrap_or_else(
            |_| {
                panic!(
                    "CHRONICLE_TEST_PG_BINDIR is not set: it names the directory of initdb and \
                     pg_ctl (script/test sets it)"
                )
            },
        ));
        let dir = log_root.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let port = chronicle_tests::free_port().expect("a free port");
        let server = PrivatePostgres {
            bindir,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            server.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&server.dir),
                "chown",
            );
        }
        let data = server.dir.join("data");
        let mut initdb = server.tool("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        server.run(&mut initdb, "initdb");
        server.start_again();
        server
    }

    /// Like [`PrivatePostgres::start`], then restarted with TLS: `cert_pem` (the chain) and
    /// `key_pem` as its certificate and key, and every TCP connection refused unless it comes
    /// over TLS with `password`, the `postgres` user's (the Unix socket stays open without one).
    pub(crate) fn start_with_tls(
        log_root: &Path,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
        password: &str,
    ) -> PrivatePostgres {
        let server = PrivatePostgres::start(log_root, name);
        let mut alter = server.tool("psql");
        alter
            .arg("-h")
            .arg(&server.dir)
            .args([
                "-p",
                &server.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("ALTER USER postgres PASSWORD '{password}'"));
        server.run(&mut alter, "psql ALTER USER");
        server.stop();
        let data = server.dir.join("data");
        let key = data.join("server.key");
        std::fs::write(data.join("server.crt"), cert_pem).expect("the server certificate");
        std::fs::write(&key, key_pem).expect("the server key");
        // PostgreSQL refuses a key others may read, or one its user does not own.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600 the server key");
        if server.as_postgres {
            server.run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&key)
                    .arg(data.join("server.crt")),
                "chown the TLS files",
            );
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\n# tests/e2e/postgres.rs: TLS\nssl = on\nssl_cert_file = 'server.crt'\n\
              ssl_key_file = 'server.key'\n",
        )
        .expect("append to postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
        server.start_again();
        server
    }

    /// The server's port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A URL of the server's `postgres` database.
    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut), waiting until it is down.
    pub(crate) fn stop(&self) {
        let mut stop = self.pg_ctl();
        stop.args(["stop", "-m", "fast", "-w"]);
        self.run(&mut stop, "pg_ctl stop");
    }

    /// Starts the stopped server again on the same port, waiting until it accepts connections.
    pub(crate) fn start_again(&self) {
        let mut start = self.pg_ctl();
        start
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["start", "-w"]);
        self.run(&mut start, "pg_ctl start");
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.tool("pg_ctl");
        command.arg("-D").arg(self.dir.join("data"));
        command
    }

    fn tool(&self, name: &str) -> Command {
        // The client tools may live elsewhere than initdb and pg_ctl (Debian puts psql on PATH).
        let path = Some(self.bindir.join(name))
            .filter(|path| path.exists())
            .unwrap_or_else(|| PathBuf::from(name));
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, command: &mut Command, what: &str) {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        assert!(
            output.status.success(),
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = self.pg_ctl();
        stop.args(["stop", "-m", "immediate", "-w"]);
        // Already stopped is fine; the directory goes either way.
        let _ = stop.output();
        // A failed test keeps the directory (and the log in it) for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
