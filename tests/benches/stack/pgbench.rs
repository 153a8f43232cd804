//! The baseline of reads: pgbench running the query API's own statements.

use std::process::Command;
use std::time::Duration;

use chronicle_tests::bench::{Latencies, Result};

use crate::services::User;

/// The baseline of reads: pgbench running the query API's statements, one read per
/// transaction (profiles and home timelines, half each, of a random user), as many clients as
/// the query API gets, prepared.
pub(crate) struct Pgbench {
    database_url: String,
    scripts: Vec<std::path::PathBuf>,
    clients: usize,
    duration: Duration,
}

impl Pgbench {
    /// Writes the scripts; a table maps pgbench's random numbers to the users' ids, looked up
    /// inside each statement (an index probe, not a round trip).
    pub(crate) async fn prepare(
        database_url: &str,
        db: &tokio_postgres::Client,
        users: &[User],
        clients: usize,
        duration: Duration,
    ) -> Result<Pgbench> {
        db.batch_execute(
            "CREATE TABLE public.bench_users (n int PRIMARY KEY, user_id uuid NOT NULL)",
        )
        .await?;
        for (n, user) in users.iter().enumerate() {
            db.execute(
                "INSERT INTO public.bench_users VALUES ($1, $2::text::uuid)",
                &[&i32::try_from(n + 1)?, &user.id],
            )
            .await?;
        }
        let schema = active_schema(db).await?;
        let pick = format!("\\set n random(1, {})\n", users.len());
        let id = "(SELECT user_id FROM public.bench_users WHERE n = :n)";
        // The profile; its following count is named for the timeline's `\\gset`.
        let profile_sql = format!(
            "SELECT u.user_id, u.handle, u.display_name, u.bio, u.joined_at, coalesce(c.post_count, 0), coalesce(c.follower_count, 0), coalesce(c.following_count, 0) AS following, coalesce(c.likes_received, 0), coalesce(c.likes_given, 0) FROM {schema}.users u LEFT JOIN {schema}.user_counters c ON c.user_id = u.user_id WHERE u.user_id = {id}"
        );
        let profile = format!("{pick}{profile_sql};\n");
        // The query API's two statements: the user's profile (how many they follow), then
        // their timeline merged per author (up to 200 followees, as every seeded user here) or
        // filtered from the global feed.
        let page = "(p.published_at, p.post_id) < ('infinity'::timestamptz, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)";
        let columns = "p.post_id, p.body, p.published_at, p.like_count, u.user_id, u.handle, u.display_name, p.reply_to, coalesce(c.reply_count, 0)";
        let joins = format!(
            "JOIN {schema}.users u ON u.user_id = p.author_id LEFT JOIN {schema}.post_counters c ON c.post_id = p.post_id"
        );
        let newest = "ORDER BY p.published_at DESC, p.post_id DESC";
        let timeline = format!(
            "{pick}{profile_sql} \\gset
\\if :following <= 200
SELECT {columns} FROM (SELECT p.* FROM (SELECT {id} AS author_id UNION SELECT followee_id FROM {schema}.follows WHERE follower_id = {id}) a CROSS JOIN LATERAL (SELECT * FROM {schema}.posts p WHERE p.author_id = a.author_id AND p.deleted_at IS NULL AND {page} {newest} LIMIT 21) p {newest} LIMIT 21) p {joins} {newest};
\\else
SELECT {columns} FROM {schema}.posts p {joins} WHERE p.deleted_at IS NULL AND (p.author_id = {id} OR p.author_id IN (SELECT followee_id FROM {schema}.follows WHERE follower_id = {id})) AND {page} {newest} LIMIT 21;
\\endif
"
        );
        Pgbench::with_scripts(
            database_url,
            &[("profile", profile), ("timeline", timeline)],
            clients,
            duration,
        )
    }

    /// The baseline of post searches: the query API's search statement for `user <n>` (the
    /// seeded post of user n: "hello from bench user n"), n random among `users` of them.
    pub(crate) async fn search(
        database_url: &str,
        db: &tokio_postgres::Client,
        users: usize,
        clients: usize,
        duration: Duration,
    ) -> Result<Pgbench> {
        let schema = active_schema(db).await?;
        let columns = "p.post_id, p.body, p.published_at, p.like_count, u.user_id, u.handle, u.display_name, p.reply_to, coalesce(c.reply_count, 0)";
        let search = format!(
            "\\set n random(0, {last})
WITH matches AS (SELECT s.post_id, ts_rank_cd(s.document, query)::float8 AS score FROM {schema}.post_search s, websearch_to_tsquery('english', 'user ' || :n) query WHERE s.document @@ query) SELECT * FROM (SELECT {columns} FROM {schema}.posts p JOIN {schema}.users u ON u.user_id = p.author_id LEFT JOIN {schema}.post_counters c ON c.post_id = p.post_id WHERE p.deleted_at IS NULL) p JOIN matches m USING (post_id) WHERE (m.score, m.post_id) < ('Infinity'::float8, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid) ORDER BY m.score DESC, m.post_id DESC LIMIT 21;
",
            last = users.saturating_sub(1)
        );
        Pgbench::with_scripts(database_url, &[("search", search)], clients, duration)
    }

    fn with_scripts(
        database_url: &str,
        named: &[(&str, String)],
        clients: usize,
        duration: Duration,
    ) -> Result<Pgbench> {
        let mut scripts = Vec::new();
        for (name, script) in named {
            let path = std::env::temp_dir().join(format!(
                "chronicle-pgbench-{}-{name}.sql",
                std::process::id()
            ));
            std::fs::write(&path, script)?;
            scripts.push(path);
        }
        Ok(Pgbench {
            database_url: database_url.to_owned(),
            scripts,
            clients,
            duration,
        })
    }

    /// Reads/s as fast as pgbench goes.
    pub(crate) fn saturation(&self) -> Result<f64> {
        self.run(&[])
    }

    /// Reads scheduled at `rate` per second: each one's latency from when it was due, as
    /// pgbench measures it under `--rate`.
    pub(crate) fn at(&self, rate: f64) -> Result<Latencies> {
        let logs =
            std::env::temp_dir().join(format!("chronicle-pgbench-{}-log", std::process::id()));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        let prefix = logs.join("read");
        self.run(&[
            "--rate".to_owned(),
            format!("{rate:.0}"),
            "--log".to_owned(),
            format!("--log-prefix={}", prefix.display()),
        ])?;
        // Each line: client, transaction, latency (µs), script, epoch s, epoch µs, lag (µs).
        let mut samples = Vec::new();
        for file in std::fs::read_dir(&logs)? {
            for line in std::fs::read_to_string(file?.path())?.lines() {
                if let Some(micros) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    samples.push(micros / 1000.0);
                }
            }
        }
        std::fs::remove_dir_all(&logs)?;
        Ok(Latencies::sorted(samples))
    }

    fn run(&self, extra: &[String]) -> Result<f64> {
        let mut command = Command::new("pgbench");
        command
            .args(["-n", "-M", "prepared", "-j", "2"])
            .args(["-c", &self.clients.to_string()])
            .args(["-T", &self.duration.as_secs().max(1).to_string()])
            .args(extra);
        for script in &self.scripts {
            command.arg("-f").arg(format!("{}@1", script.display()));
        }
        let output = command.arg(&self.database_url).output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find(|line| line.starts_with("tps = "))
            .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok())
            .ok_or_else(|| {
                format!(
                    "pgbench failed: {}{}",
                    text,
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        Ok(tps)
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        for script in &self.scripts {
            let _ = std::fs::remove_file(script);
        }
    }
}

/// The schema of the active generation's read models.
async fn active_schema(db: &tokio_postgres::Client) -> Result<String> {
    Ok(db
        .query_one(
            "SELECT 'read_' || name FROM projection.generations WHERE state = 'active'",
            &[],
        )
        .await?
        .get(0))
}
