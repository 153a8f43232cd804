//! What Linux (and the JVM) say about the processes of a run: the CPU each part of the machine
//! used during a measure, which part that makes the bound, and peak memory.

use std::collections::BTreeMap;
use std::time::Instant;

/// The part of [`CpuUse`] that is none of the run's processes.
const OUTSIDE: &str = "everything else";
/// The fewest cores a part of [`CpuShare`] used to be listed.
const SHOWN: f64 = 0.005;

/// The broker's PID: `CHRONICLE_BENCH_BROKER_PID`, set by `script/bench`.
pub fn broker_pid() -> Option<u32> {
    std::env::var("CHRONICLE_BENCH_BROKER_PID")
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
}

/// CPU time used so far by each part of the machine a benchmark runs on: the named processes
/// (the services, by pid), the broker, every PostgreSQL process, and everything else. Two
/// snapshots around a measure tell which part the machine's cores went to.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    seconds: BTreeMap<String, f64>,
    at: Option<Instant>,
}

impl CpuUse {
    /// Reads `/proc` now; `named` are (name, pid) of the processes to tell apart.
    pub fn now(named: &[(&str, u32)]) -> CpuUse {
        let broker = broker_pid();
        let mut seconds = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return CpuUse::default();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // A process that ended and was waited for adds its time to its parent's cutime and
            // cstime: PostgreSQL's backends to the postmaster's, pgbench to this benchmark's.
            let Some(Stat { comm, times }) = Stat::parse(&stat) else {
                continue;
            };
            let [utime, stime, cutime, cstime] = times;
            let (own, children) = (utime + stime, cutime + cstime);
            if pid == std::process::id() {
                *seconds.entry("benchmark client".to_owned()).or_insert(0.0) += own;
                // Its children: pgbench, and services it stopped (none while measuring).
                *seconds.entry("pgbench".to_owned()).or_insert(0.0) += children;
                continue;
            }
            let used = own + children;
            let name = if let Some((name, _)) = named.iter().find(|(_, p)| *p == pid) {
                (*name).to_owned()
            } else if Some(pid) == broker {
                "broker (Kafka)".to_owned()
            } else if comm == "postgres" {
                "postgres".to_owned()
            } else if comm == "pgbench" {
                "pgbench".to_owned()
            } else {
                OUTSIDE.to_owned()
            };
            *seconds.entry(name).or_insert(0.0) += used;
        }
        CpuUse {
            seconds,
            at: Some(Instant::now()),
        }
    }

    /// What each part used since `before`, in cores (CPU seconds per second).
    pub fn since(&self, before: &CpuUse) -> CpuShare {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let elapsed = match (self.at, before.at) {
            (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
            _ => return CpuShare::default(),
        };
        let mut parts: Vec<(String, f64)> = self
            .seconds
            .iter()
            .map(|(name, secs)| {
                let earlier = before.seconds.get(name).copied().unwrap_or(0.0);
                // Processes that ended in between make "everything else" shrink; not below 0.
                (name.clone(), ((secs - earlier) / elapsed).max(0.0))
            })
            .filter(|(_, cores)| *cores >= SHOWN)
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuShare { parts, cores }
    }
}

/// The cores each part of the machine used during a measure, largest first.
#[derive(Debug, Clone, Default)]
pub struct CpuShare {
    parts: Vec<(String, f64)>,
    cores: usize,
}

impl CpuShare {
    /// Several measures' shares as one: each part's cores averaged over `parts`, weighted by
    /// how long each ran.
    pub fn combined(parts: &[(CpuShare, std::time::Duration)]) -> CpuShare {
        let seconds: f64 = parts.iter().map(|(_, took)| took.as_secs_f64()).sum();
        let mut used: BTreeMap<String, f64> = BTreeMap::new();
        for (share, took) in parts {
            for (name, cores) in &share.parts {
                *used.entry(name.clone()).or_insert(0.0) += cores * took.as_secs_f64();
            }
        }
        let mut combined: Vec<(String, f64)> = used
            .into_iter()
            .map(|(name, core_seconds)| (name, core_seconds / seconds.max(f64::MIN_POSITIVE)))
            .filter(|(_, cores)| *cores >= SHOWN)
            .collect();
        combined.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuShare {
            parts: combined,
            cores: parts.first().map_or(0, |(share, _)| share.cores),
        }
    }

    /// The cores all parts used together.
    pub fn busy(&self) -> f64 {
        self.parts.iter().map(|(_, cores)| cores).sum()
    }

    /// The cores `part` used (0 when it used none).
    pub fn of(&self, part: &str) -> f64 {
        self.parts
            .iter()
            .find(|(name, _)| name == part)
            .map_or(0.0, |(_, cores)| *cores)
    }

    /// Which part bounds the measure, as far as CPU tells: the machine's cores when they were
    /// (nearly) all busy, named by the run's largest users of them (and what else ran on the
    /// machine); a part at about one core while the machine had room (one busy thread: a
    /// serial step); the largest part otherwise, when it used more than that; else not the CPU
    /// but waiting (acknowledgements, locks, timers).
    pub fn bound(&self) -> String {
        let Some((top, top_cores)) = self
            .parts
            .iter()
            .find(|(name, _)| name != OUTSIDE)
            .or(self.parts.first())
        else {
            return "not measured".to_owned();
        };
        let (busy, cores) = (self.busy(), self.cores);
        let room = format!("while the machine had room ({busy:.2} of {cores} cores busy)");
        if busy >= 0.9 * cores.max(1) as f64 {
            let largest: Vec<String> = self
                .parts
                .iter()
                .filter(|(name, _)| name != OUTSIDE)
                .take(3)
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            let outside = self.of(OUTSIDE);
            let outside = if outside >= 0.1 {
                format!("; processes outside the benchmark took {outside:.2}")
            } else {
                String::new()
            };
            format!(
                "the machine's CPU ({busy:.2} of {cores} cores busy; largest: {}{outside})",
                largest.join(", ")
            )
        } else if (0.9..=1.1).contains(top_cores) {
            format!("{top}, at {top_cores:.2} of a core {room}: one busy thread, a serial step")
        } else if *top_cores > 1.1 {
            format!("{top}, at {top_cores:.2} cores, the largest part, {room}")
        } else {
            format!(
                "not the CPU ({busy:.2} of {cores} cores busy, the most {top} {top_cores:.2}): \
                 time spent waiting, not computing"
            )
        }
    }
}

impl std::fmt::Display for CpuShare {
    /// "postgres 0.71, query-api 0.42, ...; 1.50 of 2 cores busy".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("not measured");
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        write!(
            f,
            "{}; {:.2} of {} cores busy",
            parts.join(", "),
            self.busy(),
            self.cores
        )
    }
}

/// CPU seconds the broker's JIT compiler threads (HotSpot's `C1 CompilerThread`s and `C2
/// CompilerThread`s) have used so far; `None` without a broker PID. A JVM started for the run
/// compiles its hot paths during the first sustained load, which would be charged to whichever
/// measure comes first.
pub fn broker_jit_seconds() -> Option<f64> {
    let pid = broker_pid()?;
    let mut seconds = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some(Stat { comm, times }) = Stat::parse(&stat)
            && comm.contains("CompilerThre")
        {
            seconds += times[0] + times[1];
        }
    }
    Some(seconds)
}

/// What the benchmarks read of a `/proc/<pid>/stat` (or a thread's `/proc/<pid>/task/<tid>/stat`).
struct Stat<'a> {
    /// The command name (threads have their own: HotSpot's compiler threads, say).
    comm: &'a str,
    /// utime, stime, cutime and cstime, in seconds.
    times: [f64; 4],
}

impl Stat<'_> {
    fn parse(stat: &str) -> Option<Stat<'_>> {
        const TICKS: f64 = 100.0; // USER_HZ on Linux
        // pid (comm) state ppid ... utime stime cutime cstime: fields 14 to 17, the 12th to
        // 15th after the ')' (the comm itself may hold spaces and parentheses).
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(').map_or("", |(_, comm)| comm);
        let mut fields = tail
            .split_whitespace()
            .skip(11)
            .map(|field| field.parse::<f64>().unwrap_or(0.0) / TICKS);
        let mut times = [0.0; 4];
        for time in &mut times {
            *time = fields.next()?;
        }
        Some(Stat { comm, times })
    }
}

/// The most memory the process has held so far (VmHWM), in MiB; `None` once it has ended.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

/// The memory the process holds now (VmRSS), in MiB; `None` once it has ended.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The memory of a JVM (the broker), in MiB, as far as it could be read.
#[derive(Debug, Clone, Default)]
pub struct JvmMemory {
    /// Its `-Xmx` (the last one on its command line).
    pub max_heap: Option<f64>,
    /// Heap in use when asked (`jcmd <pid> GC.heap_info`).
    pub heap_used: Option<f64>,
    /// Heap committed when asked.
    pub heap_committed: Option<f64>,
    /// Its peak RSS (VmHWM): heap, metaspace, code, threads, direct buffers.
    pub peak_rss: Option<f64>,
}

impl JvmMemory {
    /// "-Xmx 512 MiB, heap in use 123 MiB of 512 committed, peak RSS 700 MiB".
    pub fn summary(&self) -> String {
        let mib = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"));
        format!(
            "-Xmx {} MiB, heap in use {} MiB of {} MiB committed (jcmd GC.heap_info, after the \
             load), peak RSS {} MiB",
            mib(self.max_heap),
            mib(self.heap_used),
            mib(self.heap_committed),
            mib(self.peak_rss)
        )
    }
}

/// The broker's memory now (`CHRONICLE_BENCH_BROKER_PID`); `None` without a broker PID. Asks
/// the JVM for its heap with `jcmd` (part of the JDK), once: a JVM of its own, so not during a
/// measure.
pub fn broker_memory() -> Option<JvmMemory> {
    let pid = broker_pid()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let max_heap = cmdline
        .split(|b| *b == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok()?.strip_prefix("-Xmx"))
        .filter_map(java_size_mib)
        .next_back();
    let (heap_used, heap_committed) = std::process::Command::new("jcmd")
        .args([&pid.to_string(), "GC.heap_info"])
        .output()
        .ok()
        .map(|out| heap_info(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or_default();
    Some(JvmMemory {
        max_heap,
        heap_used,
        heap_committed,
        peak_rss: peak_rss_mib(pid),
    })
}

/// A JVM size option's value (`512m`, `1g`, `524288k`, bytes) in MiB.
fn java_size_mib(value: &str) -> Option<f64> {
    let value = value.trim().to_ascii_lowercase();
    let (digits, scale) = match value.chars().last()? {
        'k' => (&value[..value.len() - 1], 1.0 / 1024.0),
        'm' => (&value[..value.len() - 1], 1.0),
        'g' => (&value[..value.len() - 1], 1024.0),
        't' => (&value[..value.len() - 1], 1024.0 * 1024.0),
        _ => (&value[..], 1.0 / 1024.0 / 1024.0),
    };
    Some(digits.parse::<f64>().ok()? * scale)
}

/// (used, committed) in MiB from `jcmd GC.heap_info`'s first heap line, e.g.
/// ` garbage-first heap   total 524288K, used 123456K [0x..., 0x...)`.
fn heap_info(text: &str) -> (Option<f64>, Option<f64>) {
    let Some(line) = text
        .lines()
        .find(|l| l.contains(" heap ") && l.contains("used"))
    else {
        return (None, None);
    };
    let after = |word: &str| {
        line.split_once(word)?
            .1
            .split([',', ' '])
            .find(|s| !s.is_empty())?
            .strip_suffix('K')?
            .parse::<f64>()
            .ok()
            .map(|kib| kib / 1024.0)
    };
    (after(" used "), after(" total "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jvm_sizes_read_in_mib() {
        assert_eq!(java_size_mib("512m"), Some(512.0));
        assert_eq!(java_size_mib("1G"), Some(1024.0));
        assert_eq!(java_size_mib("524288k"), Some(512.0));
        assert_eq!(java_size_mib("1048576"), Some(1.0));
        assert_eq!(java_size_mib("lots"), None);
    }

    #[test]
    fn heap_info_gives_used_and_committed() {
        let text = "18046:\n garbage-first heap   total 524288K, used 123904K [0x00000000e0000000, 0x0000000100000000)\n  region size 1024K, 50 young (51200K), 3 survivors (3072K)\n Metaspace       used 45000K, committed 45500K, reserved 1114112K\n";
        assert_eq!(heap_info(text), (Some(121.0), Some(512.0)));
        assert_eq!(heap_info("no such process"), (None, None));
    }

    #[test]
    fn the_bound_names_the_busiest_part() {
        let share = |parts: &[(&str, f64)]| CpuShare {
            parts: parts.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
            cores: 2,
        };
        assert_eq!(
            share(&[
                ("everything else", 0.8),
                ("command-api", 0.7),
                ("broker (Kafka)", 0.5)
            ])
            .bound(),
            "the machine's CPU (2.00 of 2 cores busy; largest: command-api 0.70, broker (Kafka) \
             0.50; processes outside the benchmark took 0.80)"
        );
        assert!(
            share(&[("projector", 0.97), ("postgres", 0.3)])
                .bound()
                .starts_with("projector, at 0.97 of a core")
        );
        assert!(
            share(&[("broker (Kafka)", 0.2)])
                .bound()
                .starts_with("not the CPU")
        );
    }
}
