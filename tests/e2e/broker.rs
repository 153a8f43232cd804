//! Private Apache Kafka brokers for one test, which the test may kill and start again: the broker
//! `script/test` runs is shared by every test. One node, or a cluster of several KRaft nodes
//! (each broker and controller in one JVM) on 127.0.0.1.
//!
//! `script/test` exports `CHRONICLE_KAFKA_HOME`, where `script/bootstrap` installed Kafka's jars
//! (`libs/`). The nodes share `script/broker/server.properties` with every other broker our
//! scripts start, and add their own node id, listeners, voters and data directory.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a node may take from its start to serving.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How to start a [`KafkaCluster`].
pub(crate) struct ClusterBuilder {
    nodes: usize,
    properties: Vec<(String, String)>,
    listeners: Vec<String>,
    /// Extra arguments of `kafka-storage format` (such as `--add-scram`).
    format_args: Vec<String>,
}

impl ClusterBuilder {
    /// The number of KRaft nodes (default 1). Each is a broker and a controller voter.
    pub(crate) fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// A broker setting of every node, on top of the shared ones.
    pub(crate) fn property(mut self, key: &str, value: &str) -> Self {
        self.properties.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Another listener of every node besides PLAINTEXT, named after its security protocol
    /// (`SSL`, `SASL_SSL`), on a port of its own; its settings come from [`Self::property`]
    /// (`listener.name.ssl.*`).
    pub(crate) fn listener(mut self, name: &str) -> Self {
        self.listeners.push(name.to_owned());
        self
    }

    /// An extra argument of `kafka-storage format`, which prepares each node's data directory:
    /// `--add-scram`, for one, puts SCRAM credentials into the metadata log before the start.
    pub(crate) fn format_arg(mut self, arg: &str) -> Self {
        self.format_args.push(arg.to_owned());
        self
    }

    /// Formats the nodes' data directories in `<root>/<name>` and starts them (blocking until
    /// every node serves).
    pub(crate) fn start(self, root: &Path, name: &str) -> KafkaCluster {
        let home = PathBuf::from(std::env::var("CHRONICLE_KAFKA_HOME").unwrap_or_else(|_| {
            panic!(
                "CHRONICLE_KAFKA_HOME is not set: it names the directory script/bootstrap \
                 installed Apache Kafka into (script/test sets it)"
            )
        }));
        let classpath = home.join("libs").join("*");
        assert!(
            home.join("libs").is_dir(),
            "no Kafka jars in {} (run script/bootstrap)",
            home.join("libs").display()
        );
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut ports = Ports::default();
        let nodes: Vec<Node> = (1..=self.nodes)
            .map(|id| Node {
                id: u32::try_from(id).expect("a node id"),
                port: ports.next(),
                controller_port: ports.next(),
                listeners: self
                    .listeners
                    .iter()
                    .map(|l| (l.clone(), ports.next()))
                    .collect(),
                dir: dir.join(format!("node-{id}")),
                process: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let shared = std::fs::read_to_string(config_dir().join("server.properties"))
            .expect("script/broker/server.properties");
        let cluster_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::now_v7().as_bytes());
        let mut cluster = KafkaCluster {
            classpath,
            nodes,
            dir,
        };
        for node in &cluster.nodes {
            std::fs::create_dir_all(&node.dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", node.dir.display()));
            let mut listeners = vec![format!("PLAINTEXT://127.0.0.1:{}", node.port)];
            listeners.extend(
                node.listeners
                    .iter()
                    .map(|(name, port)| format!("{name}://127.0.0.1:{port}")),
            );
            let advertised = listeners.join(",");
            let mut properties = format!(
                "{shared}\n# This node (tests/e2e/broker.rs).\nnode.id={}\n\
                 controller.quorum.voters={voters}\nlisteners={advertised},CONTROLLER://127.0.0.1:{}\n\
                 advertised.listeners={advertised}\nlog.dirs={}\n",
                node.id,
                node.controller_port,
                node.dir.join("log").display()
            );
            for (key, value) in &self.properties {
                properties.push_str(&format!("{key}={value}\n"));
            }
            std::fs::write(node.properties(), properties).expect("the node's server.properties");
            let formatted = cluster
                .java()
                .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                .arg(node.properties())
                .args(&self.format_args)
                .stdout(node.log())
                .stderr(node.log())
                .status()
                .expect("java runs Kafka's StorageTool");
            assert!(
                formatted.success(),
                "formatting {} failed (log: {})",
                node.dir.display(),
                node.dir.join("broker.log").display()
            );
        }
        // All nodes at once: a controller quorum elects its leader only once a majority runs.
        let starts: Vec<u64> = (0..cluster.nodes.len()).map(|i| cluster.spawn(i)).collect();
        for (i, from) in starts.into_iter().enumerate() {
            cluster.wait_started(i, from);
        }
        cluster
    }
}

/// Private Kafka nodes with their data in directories of their own; killed, and their data
/// deleted, on drop (a failed test keeps the data and logs for a look).
pub(crate) struct KafkaCluster {
    classpath: PathBuf,
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    /// Extra listeners: name and port.
    listeners: Vec<(String, u16)>,
    dir: PathBuf,
    process: Option<Child>,
}

impl Node {
    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("the broker's log file")
    }
}

impl KafkaCluster {
    /// A builder for one node with the shared settings.
    pub(crate) fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 1,
            properties: Vec::new(),
            listeners: Vec::new(),
            format_args: Vec::new(),
        }
    }

    /// A single node with the shared settings, in `<root>/<name>`.
    pub(crate) fn single(root: &Path, name: &str) -> KafkaCluster {
        KafkaCluster::builder().start(root, name)
    }

    /// The bootstrap address: every node's PLAINTEXT listener.
    pub(crate) fn address(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's address on the extra listener `name`.
    pub(crate) fn listener_address(&self, name: &str) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let (_, port) = n
                    .listeners
                    .iter()
                    .find(|(l, _)| l == name)
                    .unwrap_or_else(|| panic!("no listener {name}"));
                format!("127.0.0.1:{port}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node ids, in order: node `i` (0-based) has id `i + 1`.
    pub(crate) fn node_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .map(|n| i32::try_from(n.id).expect("a node id"))
            .collect()
    }

    /// Kills every node the hard way (SIGKILL): a crash, or machines gone.
    pub(crate) fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped node again on the same ports and data (blocking until they serve).
    pub(crate) fn start_again(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.running(*i))
            .collect();
        let starts: Vec<(usize, u64)> = stopped.into_iter().map(|i| (i, self.spawn(i))).collect();
        for (i, from) in starts {
            self.wait_started(i, from);
        }
    }

    /// Kills node `i` (0-based) with SIGKILL.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Pauses node `i` (SIGSTOP to its process): its sockets still take requests, and nothing
    /// answers them until [`KafkaCluster::resume`].
    pub(crate) fn pause(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// Lets node `i`, paused by [`KafkaCluster::pause`], go on (SIGCONT).
    pub(crate) fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    /// Sends `kill -<signal>` to node `i`'s process, by its PID.
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
            .id();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// Starts node `i` (0-based) again (blocking until it serves).
    pub(crate) fn restart(&mut self, i: usize) {
        assert!(!self.running(i), "node {i} is running");
        let from = self.spawn(i);
        self.wait_started(i, from);
    }

    /// Whether node `i` runs; a node that exited by itself is reaped and counts as stopped.
    fn running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        if let Some(process) = node.process.as_mut()
            && !matches!(process.try_wait(), Ok(None))
        {
            node.process = None;
        }
        node.process.is_some()
    }

    /// `java` with the Kafka jars on its class path and the development log configuration.
    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.arg(format!(
            "-Dlog4j2.configurationFile={}",
            config_dir().join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(&self.classpath)
        .stdin(Stdio::null());
        java
    }

    /// Starts node `i` and returns the length of its log before the start.
    fn spawn(&mut self, i: usize) -> u64 {
        let heap = std::env::var("CHRONICLE_KAFKA_HEAP").unwrap_or_else(|_| "512m".to_owned());
        let node = &self.nodes[i];
        let from = std::fs::metadata(node.dir.join("broker.log")).map_or(0, |m| m.len());
        let process = self
            .java()
            .args([format!("-Xms{heap}"), format!("-Xmx{heap}")])
            .args([
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
                "kafka.Kafka",
            ])
            .arg(node.properties())
            .stdout(node.log())
            .stderr(node.log())
            .spawn()
            .expect("java starts a Kafka node");
        self.nodes[i].process = Some(process);
        from
    }

    /// Waits until node `i` logs that it started (after byte `from` of its log) and accepts
    /// connections.
    fn wait_started(&mut self, i: usize, from: u64) {
        let deadline = Instant::now() + START_TIMEOUT;
        let node = &mut self.nodes[i];
        let log_path = node.dir.join("broker.log");
        loop {
            let started = log_since(&log_path, from).contains("Kafka Server started");
            if started && std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
                return;
            }
            if let Some(process) = node.process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                panic!(
                    "Kafka node {} exited during start-up ({status}); log: {}",
                    node.id,
                    log_path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Kafka node {} did not start within {START_TIMEOUT:?} (log: {})",
                node.id,
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Ports for the nodes' listeners: distinct, free when chosen, and below the range the kernel
/// hands out as the local ports of outgoing connections. A killed node starts again on its old
/// ports; while it is down, any connection on the machine could take a port of that range (one
/// from `free_port` is), and the node would then fail to bind.
#[derive(Default)]
struct Ports {
    taken: HashSet<u16>,
}

impl Ports {
    /// Where the search starts: clear of the well-known ports of common servers.
    const FLOOR: u16 = 10_000;

    fn next(&mut self) -> u16 {
        let ephemeral = ephemeral_ports_start();
        if ephemeral > Self::FLOOR {
            for _ in 0..1000 {
                // The random tail of a UUIDv7 spreads the tests that start clusters at once.
                let random = uuid::Uuid::now_v7().as_u128() as u64;
                let span = u64::from(ephemeral - Self::FLOOR);
                let port = Self::FLOOR + u16::try_from(random % span).expect("below the span");
                if !self.taken.contains(&port)
                    && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                {
                    self.taken.insert(port);
                    return port;
                }
            }
        }
        loop {
            let port = chronicle_tests::free_port().expect("a free port");
            if self.taken.insert(port) {
                return port;
            }
        }
    }
}

/// The first port of the kernel's ephemeral range (Linux; 32768 where it cannot be read).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `script/broker/`, the settings every development broker shares.
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("script")
        .join("broker")
}

/// What a log file holds from byte `from` on (empty when unreadable).
fn log_since(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}
