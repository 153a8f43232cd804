//! librdkafka settings passed through from the operator: what a managed Kafka asks of its
//! clients (TLS, SASL, the timeouts of its network) without Chronicle growing a flag for each.
//!
//! Two sources, the environment winning over the file:
//!
//! - `CHRONICLE_KAFKA_<PROPERTY>`: the librdkafka property upper-cased, dots as underscores
//!   (`CHRONICLE_KAFKA_SASL_MECHANISM=SCRAM-SHA-256` sets `sasl.mechanism`). A few variables
//!   with the prefix are Chronicle's own settings, not properties ([`OWN_VARIABLES`]). An empty
//!   variable is an empty value, checked like any other (as clap treats Chronicle's own
//!   variables): librdkafka refuses most empty values, which beats ignoring a variable whose
//!   value a deployment tool forgot to fill in.
//! - `CHRONICLE_KAFKA_PROPERTIES_FILE`: a file of `name=value` lines with librdkafka's own names;
//!   `#` and `!` start a comment line, blank lines are skipped, spaces around the name and the
//!   value are trimmed, and there are no escapes (a value runs to the end of its line).
//!
//! Mapping an underscore back to a dot is right for every property a string can set: librdkafka
//! writes them all with dots. The few names with underscores are callbacks and pointers
//! (`ssl_key`, `dr_msg_cb`, ...), which no string sets; a future property with an underscore
//! would go in the file, which takes names as written.
//!
//! Everything is checked once, at start-up, against the librdkafka linked into the binary: an
//! unknown name or a value librdkafka rejects is an error naming the variable (or the file and
//! line). So is a property Chronicle sets itself ([`CHRONICLE_OWNS`]): refused rather than
//! silently overridden, because most of them carry a guarantee (acks=all and idempotence on the
//! producer, offsets stored with the rows in the projector), and because librdkafka has aliases
//! (`acks` is `request.required.acks`) that a later `set` of the other name would not replace.
//!
//! Secret values (passwords, private keys, client secrets; see [`is_secret`]) never appear in
//! `Debug` output or in an error message: errors name the property, never show a value of a
//! secret, and show no value at all where the name itself may be a typo of a secret's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;

/// The prefix of pass-through variables.
pub const PREFIX: &str = "CHRONICLE_KAFKA_";

/// The variable naming the properties file.
pub const FILE_VARIABLE: &str = "CHRONICLE_KAFKA_PROPERTIES_FILE";

/// Variables with the prefix that are Chronicle's own settings, never librdkafka properties.
/// `HOME` and `HEAP` belong to the development scripts, which export them, so a service started
/// from a shell that ran the scripts sees them too.
pub const OWN_VARIABLES: &[&str] = &[
    FILE_VARIABLE,
    // projector: the consumer group protocol (it sets `group.protocol` from it).
    "CHRONICLE_KAFKA_GROUP_PROTOCOL",
    // script/ and tests/: where Apache Kafka's jars are installed.
    "CHRONICLE_KAFKA_HOME",
    // script/ and tests/: the JVM heap of the development brokers.
    "CHRONICLE_KAFKA_HEAP",
];

/// Properties Chronicle sets on its clients, by librdkafka's canonical name, and why a
/// pass-through may not set them. The first ones carry guarantees; the rest are settings
/// Chronicle derives from its own variables or tunes for its clients, which an operator's value
/// would otherwise lose to silently.
pub const CHRONICLE_OWNS: &[(&str, &str)] = &[
    ("metadata.broker.list", "set the brokers with KAFKA_BROKERS"),
    (
        "request.required.acks",
        "the producer uses acks=all: a command is answered only once every in-sync replica has \
         its event",
    ),
    (
        "enable.idempotence",
        "the producer is idempotent, so that its retries never duplicate or reorder an event",
    ),
    (
        "transactional.id",
        "Chronicle's producer is not transactional",
    ),
    (
        "message.timeout.ms",
        "the command API sets it from CHRONICLE_PRODUCE_TIMEOUT_MS",
    ),
    (
        "request.timeout.ms",
        "the command API sets it from CHRONICLE_PRODUCE_TIMEOUT_MS",
    ),
    (
        "queue.buffering.max.ms",
        "the producer sends within 2 ms, because every command waits for its event's \
         acknowledgement",
    ),
    (
        "enable.auto.commit",
        "the projector's position is stored in PostgreSQL with the rows it produced; it decides \
         itself what it reports to Kafka",
    ),
    (
        "auto.commit.enable",
        "the projector's position is stored in PostgreSQL with the rows it produced; it decides \
         itself what it reports to Kafka",
    ),
    (
        "enable.auto.offset.store",
        "the projector reports an offset only once PostgreSQL committed that event's rows",
    ),
    (
        "auto.commit.interval.ms",
        "the projector reports its offsets to Kafka every second",
    ),
    (
        "auto.offset.reset",
        "a new projector group must start from the first event",
    ),
    (
        "group.id",
        "Chronicle names its consumer groups (CHRONICLE_PROJECTOR_GROUP)",
    ),
    (
        "group.protocol",
        "the projector sets it from CHRONICLE_KAFKA_GROUP_PROTOCOL",
    ),
    (
        "group.instance.id",
        "every Chronicle client would share one static member id and fence the others out",
    ),
    (
        "partition.assignment.strategy",
        "the projector's rebalance handling expects range assignment under the classic protocol",
    ),
    (
        "session.timeout.ms",
        "the projector sets it (6 s under the classic protocol)",
    ),
    (
        "heartbeat.interval.ms",
        "the projector sets it (1 s under the classic protocol)",
    ),
    (
        "fetch.wait.max.ms",
        "the projector sets it from CHRONICLE_PROJECTOR_FETCH_WAIT_MS",
    ),
    (
        "enable.partition.eof",
        "Chronicle's consumers expect no end-of-partition events",
    ),
    (
        "statistics.interval.ms",
        "the projector's metrics come from librdkafka's statistics every 5 s",
    ),
];

/// librdkafka's aliases (`rdkafka_conf.c`, `_RK_C_ALIAS`), alias first. A pass-through is
/// keyed by the canonical name, so that the environment's `acks` replaces the file's
/// `request.required.acks` instead of both reaching librdkafka in no particular order.
const ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("sasl.mechanism", "sasl.mechanisms"),
    (
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ),
    (
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ),
    ("max.partition.fetch.bytes", "fetch.message.max.bytes"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("retries", "message.send.max.retries"),
    ("compression.type", "compression.codec"),
    ("acks", "request.required.acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
];

/// Whether a property's value is a secret, never to be shown: passwords, private keys and
/// client secrets, and the OAUTHBEARER configuration, which may carry a token.
pub fn is_secret(name: &str) -> bool {
    ["password", "secret", "passphrase", "key.pem", "ssl_key"]
        .iter()
        .any(|word| name.contains(word))
        || name == "sasl.oauthbearer.config"
}

/// librdkafka's name for a property: aliases resolved. A topic property may also be written
/// with a `topic.` prefix, which librdkafka strips; [`refusal`] looks through that too.
fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, target)| target)
}

/// Why Chronicle refuses a pass-through of `name`, if it does.
fn refusal(name: &str) -> Option<&'static str> {
    let candidates = [Some(name), name.strip_prefix("topic.")];
    candidates.into_iter().flatten().find_map(|candidate| {
        let candidate = canonical(candidate);
        CHRONICLE_OWNS
            .iter()
            .find(|(owned, _)| *owned == candidate)
            .map(|(_, why)| *why)
    })
}

/// Where a pass-through property came from, for messages.
#[derive(Clone, PartialEq, Eq)]
enum Origin {
    Variable(String),
    File { path: PathBuf, line: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Variable(name) => write!(f, "{name}"),
            Origin::File { path, line } => write!(f, "{} line {line}", path.display()),
        }
    }
}

/// Why the pass-through settings are unusable. No variant holds a property's value except
/// librdkafka's reason for rejecting a value that is not a secret.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    /// The name is no librdkafka property (a typo, or a property of another client library).
    #[error("{origin}: `{name}` is not a librdkafka property")]
    Unknown {
        /// The variable, or the file and line.
        origin: String,
        /// The property name it maps to.
        name: String,
    },
    /// librdkafka rejects the value.
    #[error("{origin}: librdkafka rejects the value of `{name}`{}", because(.reason))]
    Invalid {
        /// The variable, or the file and line.
        origin: String,
        /// The property name.
        name: String,
        /// librdkafka's reason, left out for a secret (it quotes the value).
        reason: Option<String>,
    },
    /// Chronicle sets this property itself.
    #[error("{origin}: `{name}` cannot be passed through: {why}")]
    Refused {
        /// The variable, or the file and line.
        origin: String,
        /// The property name.
        name: String,
        /// What Chronicle does with it.
        why: &'static str,
    },
    /// Two variables name the same property (an alias, or a different spelling).
    #[error("{first} and {second} both set `{name}`; keep one")]
    Twice {
        /// One variable.
        first: String,
        /// The other.
        second: String,
        /// The property.
        name: String,
    },
    /// A pass-through variable's value is not UTF-8.
    #[error("{variable} is not valid UTF-8")]
    NotUtf8 {
        /// The variable.
        variable: String,
    },
    /// The properties file cannot be read.
    #[error("{FILE_VARIABLE}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the properties file is not `name=value` (the line is not shown: it may be a
    /// secret pasted on a line of its own).
    #[error("{} line {line}: expected `name=value`", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
}

/// `": <reason>"`, or nothing when the reason is withheld.
fn because(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default()
}

/// One pass-through property.
#[derive(Clone)]
struct Property {
    value: String,
    origin: Origin,
}

/// The librdkafka properties an operator passed through, checked; applied by
/// `KafkaArgs::client_config` to every Kafka client Chronicle makes. `Debug` shows secrets as
/// `[redacted]`.
#[derive(Clone, Default)]
pub struct KafkaProperties {
    /// By canonical name.
    properties: BTreeMap<String, Property>,
}

impl KafkaProperties {
    /// Reads the pass-through from `variables` (the process environment, in production) and the
    /// properties `file`, and checks every property against librdkafka.
    pub fn load(
        variables: impl IntoIterator<Item = (OsString, OsString)>,
        file: Option<&Path>,
    ) -> Result<KafkaProperties, PropertiesError> {
        let mut properties = BTreeMap::new();
        if let Some(path) = file {
            for (name, property) in read_file(path)? {
                properties.insert(name, property);
            }
        }
        let mut from_variables: BTreeMap<String, Property> = BTreeMap::new();
        for (variable, value) in variables {
            let Some(variable) = variable.to_str() else {
                continue; // Not ours: every name with our prefix is ASCII.
            };
            let Some(rest) = variable.strip_prefix(PREFIX) else {
                continue;
            };
            if OWN_VARIABLES.contains(&variable) {
                continue;
            }
            let value = value.into_string().map_err(|_| PropertiesError::NotUtf8 {
                variable: variable.to_owned(),
            })?;
            let written = rest.to_ascii_lowercase().replace('_', ".");
            let property = check(&written, value, Origin::Variable(variable.to_owned()))?;
            let name = canonical(&written).to_owned();
            if let Some(earlier) = from_variables.get(&name) {
                let (first, second) = ordered(earlier.origin.to_string(), variable.to_owned());
                return Err(PropertiesError::Twice {
                    first,
                    second,
                    name,
                });
            }
            from_variables.insert(name, property);
        }
        properties.extend(from_variables);
        Ok(KafkaProperties { properties })
    }

    /// Whether nothing is passed through.
    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }

    /// The value passed through for `name` (canonical or alias), if any. For tests and checks;
    /// it hands out secrets like any other value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties
            .get(canonical(name))
            .map(|p| p.value.as_str())
    }

    /// Sets every pass-through property on `config`.
    pub fn apply(&self, config: &mut ClientConfig) {
        for (name, property) in &self.properties {
            config.set(name, &property.value);
        }
    }

    /// Logs what is passed through (secrets redacted) and warns about settings that turn off a
    /// check of the broker's identity. Call once at start-up.
    pub fn log(&self) {
        if self.is_empty() {
            return;
        }
        tracing::info!(properties = ?self, "Kafka client properties passed through");
        if self.get("enable.ssl.certificate.verification") == Some("false") {
            tracing::warn!(
                "enable.ssl.certificate.verification=false: the broker's certificate is not checked"
            );
        }
        if self.get("ssl.endpoint.identification.algorithm") == Some("none") {
            tracing::warn!(
                "ssl.endpoint.identification.algorithm=none: the broker's host name is not checked"
            );
        }
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, property) in &self.properties {
            if is_secret(name) {
                map.entry(name, &"[redacted]");
            } else {
                map.entry(name, &property.value);
            }
        }
        map.finish()
    }
}

/// `(a, b)` sorted, so that a message does not depend on the environment's order.
fn ordered(a: String, b: String) -> (String, String) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Reads the properties file: `name=value` lines, comments, blank lines.
fn read_file(path: &Path) -> Result<Vec<(String, Property)>, PropertiesError> {
    let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut properties = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let origin = Origin::File {
            path: path.to_owned(),
            line: index + 1,
        };
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err(PropertiesError::Malformed {
                path: path.to_owned(),
                line: index + 1,
            });
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(PropertiesError::Malformed {
                path: path.to_owned(),
                line: index + 1,
            });
        }
        let property = check(name, value.trim().to_owned(), origin)?;
        properties.push((canonical(name).to_owned(), property));
    }
    Ok(properties)
}

/// Checks one property: not Chronicle's, known to librdkafka, with a value it accepts.
fn check(name: &str, value: String, origin: Origin) -> Result<Property, PropertiesError> {
    if let Some(why) = refusal(name) {
        return Err(PropertiesError::Refused {
            origin: origin.to_string(),
            name: name.to_owned(),
            why,
        });
    }
    // librdkafka checks the name and parses the value as it would for a real client.
    let mut probe = ClientConfig::new();
    probe.set(name, &value);
    match probe.create_native_config() {
        Ok(_) => Ok(Property { value, origin }),
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            Err(PropertiesError::Unknown {
                origin: origin.to_string(),
                name: name.to_owned(),
            })
        }
        // librdkafka's description may quote the value: for a secret, only a description that
        // is about this build (OAuth/OIDC needs libcurl, which is not linked in) is shown.
        Err(KafkaError::ClientConfig(_, description, ..)) => Err(PropertiesError::Invalid {
            origin: origin.to_string(),
            name: name.to_owned(),
            reason: (!is_secret(name) || description.contains("not supported in this build"))
                .then_some(description),
        }),
        // Any other failure (a NUL byte in the value, say) says nothing about the value.
        Err(_) => Err(PropertiesError::Invalid {
            origin: origin.to_string(),
            name: name.to_owned(),
            reason: None,
        }),
    }
}

/// The `--kafka-properties-file` argument's id.
const FILE_ARG: &str = "kafka_properties_file";

/// clap reads the file's path (flag or [`FILE_VARIABLE`]); the pass-through variables are read
/// from the process environment when the arguments are parsed, so that a bad one stops the
/// service the way a bad flag does: a clear message and exit status 2, before anything starts.
impl clap::Args for KafkaProperties {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(FILE_ARG)
                .long("kafka-properties-file")
                .env(FILE_VARIABLE)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "`CHRONICLE_KAFKA_PROPERTIES_FILE`: librdkafka properties (`name=value` \
                     lines) for every Kafka client, e.g. TLS and SASL settings; variables \
                     `CHRONICLE_KAFKA_<PROPERTY>` (dots as underscores) win over it",
                ),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for KafkaProperties {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let file = matches.get_one::<PathBuf>(FILE_ARG).map(PathBuf::as_path);
        KafkaProperties::load(std::env::vars_os(), file).map_err(|err| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, err.to_string())
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<KafkaProperties, PropertiesError> {
        KafkaProperties::load(variables(pairs), None)
    }

    fn file_with(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("kafka.properties");
        std::fs::write(&path, text).expect("write the properties file");
        (dir, path)
    }

    /// A directory of its own under the system's temporary directory, removed on drop (the
    /// tests need no crate for it).
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub(super) struct Dir(PathBuf);

        impl Dir {
            pub(super) fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "chronicle-kafka-properties-{}",
                    uuid::Uuid::now_v7()
                ));
                std::fs::create_dir_all(&path).expect("a temporary directory");
                Dir(path)
            }

            pub(super) fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn variables_map_to_dotted_property_names() {
        let properties = load(&[
            ("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("CHRONICLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("CHRONICLE_KAFKA_SASL_USERNAME", "chronicle"),
            ("CHRONICLE_KAFKA_SSL_CA_LOCATION", "/etc/ssl/ca.pem"),
            (
                "CHRONICLE_KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS",
                "10000",
            ),
            ("KAFKA_BROKERS", "not a property"),
            ("PATH", "/usr/bin"),
        ])
        .expect("valid properties");
        assert_eq!(properties.get("security.protocol"), Some("SASL_SSL"));
        // `sasl.mechanism` is librdkafka's alias of `sasl.mechanisms`.
        assert_eq!(properties.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(properties.get("sasl.username"), Some("chronicle"));
        assert_eq!(properties.get("ssl.ca.location"), Some("/etc/ssl/ca.pem"));
        assert_eq!(
            properties.get("socket.connection.setup.timeout.ms"),
            Some("10000")
        );
        assert_eq!(properties.properties.len(), 5, "{properties:?}");
    }

    #[test]
    fn chronicle_s_own_variables_are_not_properties() {
        let properties = load(&[
            ("CHRONICLE_KAFKA_HOME", "/opt/kafka"),
            ("CHRONICLE_KAFKA_HEAP", "1g"),
            ("CHRONICLE_KAFKA_GROUP_PROTOCOL", "consumer"),
            ("CHRONICLE_KAFKA_PROPERTIES_FILE", "/nowhere"),
        ])
        .expect("nothing to pass through");
        assert!(properties.is_empty(), "{properties:?}");
    }

    #[test]
    fn an_empty_variable_is_an_empty_value_not_an_absent_one() {
        let err = load(&[("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "")]).expect_err("empty");
        assert!(
            err.to_string().starts_with(
                "CHRONICLE_KAFKA_SECURITY_PROTOCOL: librdkafka rejects the value of \
                 `security.protocol`"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_property_is_an_error_naming_the_variable_without_its_value() {
        let err = load(&[("CHRONICLE_KAFKA_SASL_PASSWROD", "hunter2-typo")])
            .expect_err("no such property");
        let message = err.to_string();
        assert!(
            message.contains("CHRONICLE_KAFKA_SASL_PASSWROD")
                && message.contains("`sasl.passwrod` is not a librdkafka property"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn a_value_librdkafka_rejects_is_an_error_with_its_reason() {
        let err = load(&[("CHRONICLE_KAFKA_SECURITY_PROTOCOL", "SASL_TLS")])
            .expect_err("no such protocol");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "CHRONICLE_KAFKA_SECURITY_PROTOCOL: librdkafka rejects the value of \
                 `security.protocol`: "
            ),
            "{message}"
        );
        let err = load(&[("CHRONICLE_KAFKA_SOCKET_TIMEOUT_MS", "soon")]).expect_err("not a number");
        assert!(err.to_string().contains("`socket.timeout.ms`"), "{err}");
    }

    #[test]
    fn settings_chronicle_owns_are_refused_under_every_name() {
        let refused = [
            ("CHRONICLE_KAFKA_ACKS", "1"),
            ("CHRONICLE_KAFKA_REQUEST_REQUIRED_ACKS", "0"),
            ("CHRONICLE_KAFKA_TOPIC_ACKS", "1"),
            ("CHRONICLE_KAFKA_ENABLE_IDEMPOTENCE", "false"),
            ("CHRONICLE_KAFKA_TRANSACTIONAL_ID", "x"),
            ("CHRONICLE_KAFKA_DELIVERY_TIMEOUT_MS", "1000"),
            ("CHRONICLE_KAFKA_MESSAGE_TIMEOUT_MS", "1000"),
            ("CHRONICLE_KAFKA_LINGER_MS", "100"),
            ("CHRONICLE_KAFKA_ENABLE_AUTO_COMMIT", "true"),
            ("CHRONICLE_KAFKA_AUTO_COMMIT_ENABLE", "true"),
            ("CHRONICLE_KAFKA_ENABLE_AUTO_OFFSET_STORE", "true"),
            ("CHRONICLE_KAFKA_AUTO_OFFSET_RESET", "latest"),
            ("CHRONICLE_KAFKA_GROUP_ID", "mine"),
            ("CHRONICLE_KAFKA_GROUP_INSTANCE_ID", "me"),
            ("CHRONICLE_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092"),
            ("CHRONICLE_KAFKA_METADATA_BROKER_LIST", "elsewhere:9092"),
        ];
        for (variable, value) in refused {
            let err = load(&[(variable, value)]).expect_err(variable);
            assert!(
                matches!(err, PropertiesError::Refused { .. })
                    && err.to_string().starts_with(variable),
                "{variable}: {err}"
            );
        }
        let (_dir, path) = file_with("# producer tuning\nacks = 1\n");
        let err = KafkaProperties::load(variables(&[]), Some(&path)).expect_err("acks");
        assert!(
            err.to_string().starts_with(&format!(
                "{} line 2: `acks` cannot be passed through",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn the_file_is_read_and_the_environment_wins_even_under_an_alias() {
        let (_dir, path) = file_with(
            "# managed Kafka\n\
             ! also a comment\n\
             \n\
             security.protocol = SASL_SSL\n\
             sasl.mechanisms=PLAIN\n\
             ssl.endpoint.identification.algorithm = https\n\
             sasl.password=from=the=file\n",
        );
        let properties = KafkaProperties::load(
            variables(&[("CHRONICLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")]),
            Some(&path),
        )
        .expect("valid");
        assert_eq!(properties.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(properties.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(
            properties.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        // Only the first `=` separates: the rest belongs to the value.
        assert_eq!(properties.get("sasl.password"), Some("from=the=file"));
    }

    #[test]
    fn a_malformed_line_is_an_error_that_does_not_show_the_line() {
        let (_dir, path) = file_with("security.protocol=SSL\nhunter2-on-its-own\n");
        let err = KafkaProperties::load(variables(&[]), Some(&path)).expect_err("malformed");
        let message = err.to_string();
        assert!(
            message.ends_with("line 2: expected `name=value`"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let missing = KafkaProperties::load(variables(&[]), Some(Path::new("/no/such/file")))
            .expect_err("missing file");
        assert!(
            missing
                .to_string()
                .starts_with("CHRONICLE_KAFKA_PROPERTIES_FILE: cannot read /no/such/file"),
            "{missing}"
        );
    }

    #[test]
    fn two_spellings_of_one_property_are_an_error() {
        let err = load(&[
            ("CHRONICLE_KAFKA_SASL_MECHANISM", "PLAIN"),
            ("CHRONICLE_KAFKA_SASL_MECHANISMS", "PLAIN"),
        ])
        .expect_err("twice");
        assert_eq!(
            err.to_string(),
            "CHRONICLE_KAFKA_SASL_MECHANISM and CHRONICLE_KAFKA_SASL_MECHANISMS both set \
             `sasl.mechanisms`; keep one"
        );
    }

    #[test]
    fn the_alias_table_matches_librdkafka() {
        // Setting the alias must change what librdkafka reports for the canonical name.
        let values = [
            ("bootstrap.servers", "elsewhere:9092"),
            ("max.in.flight", "3"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.oauthbearer.client.credentials.client.id", "someone"),
            (
                "sasl.oauthbearer.client.credentials.client.secret",
                "s3cret",
            ),
            ("max.partition.fetch.bytes", "12345"),
            ("linger.ms", "42"),
            ("retries", "7"),
            ("compression.type", "lz4"),
            ("acks", "1"),
            ("delivery.timeout.ms", "12345"),
        ];
        assert_eq!(values.len(), ALIASES.len());
        for (alias, value) in values {
            let target = canonical(alias);
            assert_ne!(target, alias, "{alias} is in the table");
            match ClientConfig::new().set(alias, value).create_native_config() {
                Ok(native) => assert_eq!(native.get(target).expect(target), value, "{alias}"),
                // OAuth/OIDC is not built in: librdkafka then names the target in its refusal.
                Err(KafkaError::ClientConfig(_, description, ..)) => assert!(
                    description.contains(&format!("\"{target}\" not supported in this build")),
                    "{alias}: {description}"
                ),
                Err(err) => panic!("{alias}: {err}"),
            }
        }
    }

    #[test]
    fn no_secret_appears_in_debug_output_or_errors() {
        let secrets = [
            ("CHRONICLE_KAFKA_SASL_PASSWORD", "sasl-password-value"),
            ("CHRONICLE_KAFKA_SSL_KEY_PASSWORD", "key-password-value"),
            (
                "CHRONICLE_KAFKA_SSL_KEY_PEM",
                "-----BEGIN PRIVATE KEY-----key-pem-value",
            ),
            (
                "CHRONICLE_KAFKA_SSL_KEYSTORE_PASSWORD",
                "keystore-password-value",
            ),
            (
                "CHRONICLE_KAFKA_SASL_OAUTHBEARER_CONFIG",
                "principal=x token-config-value",
            ),
        ];
        let mut pairs = secrets.to_vec();
        pairs.push(("CHRONICLE_KAFKA_SASL_USERNAME", "chronicle"));
        let properties = load(&pairs).expect("valid");
        let debug = format!("{properties:?}");
        assert!(
            debug.contains("\"sasl.username\": \"chronicle\""),
            "{debug}"
        );
        for (variable, value) in secrets {
            assert!(!debug.contains(value), "{variable} in {debug}");
            // Nor in an error about it, whatever goes wrong.
            for broken in [
                vec![(variable, value), ("CHRONICLE_KAFKA_ACKS", "1")],
                vec![(variable, value), (variable, value)],
            ] {
                if let Err(err) = load(&broken) {
                    assert!(!err.to_string().contains(value), "{err}");
                    assert!(!format!("{err:?}").contains(value), "{err:?}");
                }
            }
        }
        assert_eq!(
            debug.matches("[redacted]").count(),
            secrets.len(),
            "{debug}"
        );

        // This build has no OAuth/OIDC: the refusal says so, and still not the secret.
        let err = load(&[(
            "CHRONICLE_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
            "client-secret-value",
        )])
        .expect_err("OIDC is not built in");
        let message = err.to_string();
        assert!(message.contains("not supported in this build"), "{message}");
        assert!(!message.contains("client-secret-value"), "{message}");
        assert!(
            !format!("{err:?}").contains("client-secret-value"),
            "{err:?}"
        );
    }

    #[test]
    fn every_setting_the_producer_makes_is_refused_as_a_pass_through() {
        let kafka = super::super::KafkaArgs {
            brokers: "broker.example:9092".into(),
            topic: "unit.events".into(),
            partitions: 1,
            replication_factor: 1,
            properties: KafkaProperties::default(),
        };
        let base = kafka.client_config();
        let producer = super::super::producer_config(&kafka, std::time::Duration::from_secs(1));
        for (name, _) in producer.config_map() {
            if base.get(name).is_none() {
                assert!(refusal(name).is_some(), "the producer sets {name}");
            }
        }
        assert!(refusal("bootstrap.servers").is_some());
    }

    /// Chronicle's own `CHRONICLE_KAFKA_*` variables: those clap reads (`env = "..."`) or code
    /// reads (`var("...")`) anywhere in the workspace, and those the scripts use.
    fn variables_chronicle_defines() -> std::collections::BTreeSet<String> {
        fn visit(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if path.is_dir() {
                    if name != "target" && name != ".git" && name != ".data" {
                        visit(&path, found);
                    }
                } else if let Ok(text) = std::fs::read_to_string(&path) {
                    found.push((path, text));
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in [
            "command-api",
            "projector",
            "query-api",
            "infra",
            "tests",
            "script",
        ] {
            visit(&root.join(dir), &mut files);
        }
        let mut defined = std::collections::BTreeSet::new();
        for (path, text) in files {
            let markers: &[&str] = if path.extension().is_some_and(|e| e == "rs") {
                &["env = \"", "var(\""]
            } else {
                &["${", "$", "export "]
            };
            for marker in markers {
                for (at, _) in text.match_indices(&format!("{marker}{PREFIX}")) {
                    let name: String = text[at + marker.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    defined.insert(name);
                }
            }
        }
        defined
    }

    #[test]
    fn every_chronicle_kafka_variable_of_chronicle_s_own_is_kept_out_of_the_pass_through() {
        let defined = variables_chronicle_defines();
        // The scripts' heap setting at least (the properties file's name is a constant here).
        assert!(
            defined.contains("CHRONICLE_KAFKA_HEAP"),
            "the scan finds nothing: {defined:?}"
        );
        for variable in &defined {
            assert!(
                OWN_VARIABLES.contains(&variable.as_str()),
                "{variable} is Chronicle's own setting: add it to OWN_VARIABLES, or librdkafka \
                 gets it as a property"
            );
        }
    }

    #[test]
    fn secrets_are_recognised_by_name() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["sasl.username", "ssl.ca.location", "security.protocol"] {
            assert!(!is_secret(name), "{name}");
        }
    }
}
