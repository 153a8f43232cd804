//! The report of a run: a table of measures, each next to its baseline and goal, printed,
//! appended to BENCHMARKS.md with the machine and the revision, and added to
//! `target/bench/latest.json`.

use std::fmt::Write as _;
use std::process::Command;

use super::fixture::{Result, bench_dir, env};
use super::process::{CpuShare, broker_memory};

/// What a measure should reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Chronicle's figure at least this multiple of its baseline's (a rate).
    AtLeastTimes(f64),
    /// Chronicle's figure at most this multiple of its baseline's (a latency).
    AtMostTimes(f64),
    /// Chronicle's figure at most this, in the measure's unit.
    AtMost(f64),
    /// Reported for reference.
    None,
}

impl Goal {
    fn describe(self, unit: &str) -> String {
        match self {
            Goal::AtLeastTimes(times) => format!(">= {times}x"),
            Goal::AtMostTimes(times) => format!("<= {times}x"),
            Goal::AtMost(value) => format!("<= {value} {unit}"),
            Goal::None => "-".to_owned(),
        }
    }
}

/// One measured line: what, Chronicle's figure, its baseline's in the same run, the unit, the
/// goal, and what bounded it (the CPU each part used meanwhile).
#[derive(Debug, Clone)]
pub struct Measure {
    name: String,
    value: f64,
    baseline: Option<f64>,
    unit: &'static str,
    goal: Goal,
    bound: Option<String>,
}

impl Measure {
    /// `value` in `unit`, without baseline or goal.
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Measure {
        Measure {
            name: name.into(),
            value,
            baseline: None,
            unit,
            goal: Goal::None,
            bound: None,
        }
    }

    /// Next to `baseline`, in the same unit.
    pub fn against(mut self, baseline: f64) -> Measure {
        self.baseline = Some(baseline);
        self
    }

    /// With a goal.
    pub fn goal(mut self, goal: Goal) -> Measure {
        self.goal = goal;
        self
    }

    /// What bounded it, from the CPU each part used during the measure: said when the goal is
    /// missed.
    pub fn bounded(mut self, cpu: &CpuShare) -> Measure {
        self.bound = Some(cpu.bound());
        self
    }

    /// What bounded it, in words: said when the goal is missed.
    pub fn bounded_by(mut self, bound: impl Into<String>) -> Measure {
        self.bound = Some(bound.into());
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.map(|baseline| self.value / baseline)
    }

    /// Whether the goal is met; `None` without a goal.
    pub fn met(&self) -> Option<bool> {
        let ratio = self.ratio();
        match self.goal {
            Goal::AtLeastTimes(times) => Some(ratio.is_some_and(|r| r >= times)),
            Goal::AtMostTimes(times) => Some(ratio.is_some_and(|r| r <= times)),
            Goal::AtMost(bound) => Some(self.value <= bound),
            Goal::None => None,
        }
    }
}

/// Prints `measures` as a table with `notes` below (and, for each missed goal, what bounded
/// it), appends both to BENCHMARKS.md under `title` unless `CHRONICLE_BENCH_APPEND=0`, and
/// adds the measures to `target/bench/latest.json`, which `script/bench` empties at the start
/// of each run.
pub(super) fn report(
    title: &str,
    postgres_version: &str,
    measures: &[Measure],
    notes: &[String],
) -> Result<()> {
    let mut table = String::new();
    writeln!(
        table,
        "| measure | Chronicle | baseline | ratio | goal | met |"
    )?;
    writeln!(table, "|---|---:|---:|---:|---|---|")?;
    let mut json = Vec::new();
    let mut missed = Vec::new();
    for m in measures {
        let ratio = m.ratio();
        let met = m.met();
        writeln!(
            table,
            "| {} | {:.1} {} | {} | {} | {} | {} |",
            m.name,
            m.value,
            m.unit,
            m.baseline
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.1} {}", m.unit)),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            m.goal.describe(m.unit),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        )?;
        if met == Some(false) {
            missed.push(format!(
                "not met: {}; bound: {}",
                m.name,
                m.bound.as_deref().unwrap_or("not measured")
            ));
        }
        json.push(serde_json::json!({
            "name": m.name,
            "value": m.value,
            "baseline": m.baseline,
            "ratio": ratio,
            "unit": m.unit,
            "goal": m.goal.describe(m.unit),
            "met": met,
            "bound": m.bound,
        }));
    }
    let summary = notes
        .iter()
        .chain(&missed)
        .map(|note| format!("- {note}"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("\n{table}\n{summary}");
    if env("CHRONICLE_BENCH_APPEND", "1") == "0" {
        println!("not appended to BENCHMARKS.md (CHRONICLE_BENCH_APPEND=0)");
    } else {
        append_to_benchmarks(title, postgres_version, &table, &summary)?;
    }
    let path = bench_dir()?.join("latest.json");
    let mut all: Vec<serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    all.extend(json);
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The broker, as the report names it: `CHRONICLE_BENCH_KAFKA_VERSION` (set by `script/bench`
/// from script/lib.sh) and the heap its JVM was given.
fn broker_description() -> String {
    let version = env("CHRONICLE_BENCH_KAFKA_VERSION", "(version not given)");
    let heap = broker_memory()
        .and_then(|memory| memory.max_heap)
        .map_or_else(String::new, |mib| format!(", JVM heap -Xmx{mib:.0}m"));
    format!("Apache Kafka {version} (KRaft, one node{heap})")
}

/// Appends a section titled `title` with `table` and `summary` to BENCHMARKS.md, with the
/// machine, the broker, PostgreSQL and the git revision.
fn append_to_benchmarks(
    title: &str,
    postgres_version: &str,
    table: &str,
    summary: &str,
) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let root_arg = root.display().to_string();
    let mut revision = run("git", &["-C", &root_arg, "rev-parse", "--short=7", "HEAD"]);
    // Changes to the code, not the entries a run of `script/bench` has just appended.
    let changed = run(
        "git",
        &[
            "-C",
            &root_arg,
            "status",
            "--porcelain",
            "--",
            ".",
            ":!BENCHMARKS.md",
        ],
    );
    if !changed.is_empty() {
        revision.push_str("-dirty");
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / 1024 / 1024));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let entry = format!(
        "\n### {title} — {} (rev {revision})\n\nMachine: {cores} cores, {cpu}{memory}; broker {}, \
         PostgreSQL {postgres_version}, the services in release builds, all on this one \
         machine.\n\n{table}\n{summary}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        broker_description(),
    );
    let path = root.join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nAppended by `script/bench`. Absolute numbers drift on shared machines; \
         the ratios, measured side by side in one run, are what to compare.\n"
            .to_owned()
    });
    text.push_str(&entry);
    std::fs::write(&path, text)?;
    println!("appended to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_compare_the_ratio_or_the_value() {
        let ingest = Measure::new("ingest", 900.0, "commands/s").against(1000.0);
        assert_eq!(
            ingest.clone().goal(Goal::AtLeastTimes(0.8)).met(),
            Some(true)
        );
        assert_eq!(
            ingest.clone().goal(Goal::AtLeastTimes(0.95)).met(),
            Some(false)
        );
        assert_eq!(ingest.met(), None);
        let p99 = Measure::new("p99", 30.0, "ms").against(10.0);
        assert_eq!(p99.goal(Goal::AtMostTimes(2.0)).met(), Some(false));
        let rss = Measure::new("rss", 20.0, "MiB").goal(Goal::AtMost(64.0));
        assert_eq!(rss.met(), Some(true));
        let unmeasured = Measure::new("rss", f64::NAN, "MiB").goal(Goal::AtMost(64.0));
        assert_eq!(unmeasured.met(), Some(false));
    }
}
