//! The node's configuration: one TOML file plus `SWITCHYARD_*` environment overrides.
//!
//! [`NodeConfig::load`] merges, lowest priority first: the defaults, the TOML file (when a
//! path is given; a missing file is an error), then environment variables named
//! `SWITCHYARD_<SECTION>__<KEY>` (double underscore between levels, case-insensitive), for
//! example `SWITCHYARD_LISTEN=0.0.0.0:8080` or `SWITCHYARD_TRANSPORT__KIND=nats`. Only
//! variables whose first segment is a section of this file are read, so `SWITCHYARD_URL` or
//! `SWITCHYARD_TOKEN` (the operator CLI's) do not disturb a node.
//!
//! Unknown keys are refused, and [`NodeConfig::validate`] checks every value, so a node never
//! starts half-configured: each error names the key, the value and what is allowed.
//!
//! With no file and no environment: the embedded log under `./switchyard-data`, listening on
//! `127.0.0.1:7878`, auth off (allowed only on a loopback address).
//!
//! ```toml
//! listen = "127.0.0.1:7878"
//!
//! [transport]
//! kind = "log"              # memory | log | nats
//! data_dir = "./switchyard-data"
//!
//! [auth]
//! enabled = true
//! [[auth.tokens]]
//! principal = "ingest"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! [[auth.principals]]
//! name = "ingest"
//! publish = ["sensors.#"]
//!
//! [limits]
//! max_body_bytes = 1048576
//! [limits.publish_rate]
//! per_second = 1000
//! burst = 2000
//!
//! [ws]
//! outbound_buffer = 1024
//! slow_client = "drop_oldest"  # or "disconnect"
//!
//! [[ingest.zmq]]
//! endpoint = "tcp://127.0.0.1:5555"
//! topic = "sensors.raw"
//!
//! [encryption]              # payloads of these topics are ciphertext in the log / NATS
//! topics = ["payments.#"]
//! active = "2026-12"        # the key that encrypts; the others still decrypt
//! [encryption.keys]         # id = base64 of 32 bytes (`openssl rand -base64 32`)
//! "2026-11" = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
//! "2026-12" = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use switchyard_core::{Pattern, Topic};

mod gateway;
mod validate;

pub use gateway::*;

/// Prefix of the environment variables read by [`NodeConfig::load`].
pub const ENV_PREFIX: &str = "SWITCHYARD_";

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Default data directory of the log transport.
pub const DEFAULT_DATA_DIR: &str = "./switchyard-data";

/// The whole configuration of a node. Every field has a default (see each one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Address the gateway listens on. Default `127.0.0.1:7878`.
    pub listen: SocketAddr,
    /// What carries events: in memory, the embedded log, or NATS JetStream.
    /// Default: the log under `./switchyard-data`.
    pub transport: TransportConfig,
    /// Bearer tokens, JWT and the principals' grants. Default: off.
    pub auth: AuthConfig,
    /// Body, message, timeout and rate limits.
    pub limits: LimitsConfig,
    /// WebSocket settings.
    pub ws: WsConfig,
    /// How much history is kept: dead letters, traces, log retention.
    pub retention: RetentionConfig,
    /// TLS: serve HTTPS when a certificate and key are configured. Default: none.
    pub tls: Option<TlsConfig>,
    /// Log output of the node process.
    pub logging: LoggingConfig,
    /// Ingest sources that feed topics from outside (ZeroMQ PULL endpoints).
    pub ingest: IngestConfig,
    /// What `/ready` requires.
    pub readiness: ReadinessConfig,
    /// Bus defaults for subscriptions made through the gateway.
    pub bus: BusConfig,
    /// Payload encryption on the transport (log or NATS). Default: none.
    pub encryption: Option<EncryptionConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            transport: TransportConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            ws: WsConfig::default(),
            retention: RetentionConfig::default(),
            tls: None,
            logging: LoggingConfig::default(),
            ingest: IngestConfig::default(),
            readiness: ReadinessConfig::default(),
            bus: BusConfig::default(),
            encryption: None,
        }
    }
}

/// Which transport carries events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportConfig {
    /// In process only: nothing survives a restart, nothing is shared between nodes.
    Memory,
    /// The embedded durable log (switchyard-log).
    Log(LogTransportConfig),
    /// NATS JetStream (switchyard-nats): nodes on one NATS share consumer groups.
    Nats(NatsTransportConfig),
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self::Log(LogTransportConfig::default())
    }
}

impl TransportConfig {
    /// `memory`, `log` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Log(_) => "log",
            Self::Nats(_) => "nats",
        }
    }
}

/// Settings of the embedded log transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LogTransportConfig {
    /// Directory of the log (and of the node's dead-letter file). Default `./switchyard-data`.
    pub data_dir: PathBuf,
    /// When a publish counts as stored: `always` (fsync before 202, the default),
    /// `interval` (fsync at most `sync_interval_ms` later) or `never` (OS buffers only).
    pub durability: Durability,
    /// Sync interval for `durability = "interval"`, milliseconds. Default 100.
    pub sync_interval_ms: u64,
    /// Segment size in bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// A delivery not settled within this time is redelivered, milliseconds. Default 30000.
    pub ack_wait_ms: u64,
    /// Deliveries before a message is dead-lettered (0: no limit). Default 5.
    pub max_deliver: u32,
}

impl Default for LogTransportConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            durability: Durability::Always,
            sync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
            ack_wait_ms: 30_000,
            max_deliver: 5,
        }
    }
}

/// Durability of a publish on the log transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// On disk (fsync) before the publish is acknowledged.
    #[default]
    Always,
    /// Written to the OS; synced at most `sync_interval_ms` later.
    Interval,
    /// Written to the OS; synced on close only.
    Never,
}

/// Settings of the NATS JetStream transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsTransportConfig {
    /// Server URL. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Connection name, and prefix of the default stream. Default `switchyard`.
    pub name: String,
    /// Streams: each holds the topics matching its patterns; at least one is required (a
    /// topic no stream holds cannot be published). Default: none.
    pub streams: Vec<NatsStreamConfig>,
    /// `file` (default) or `memory` storage.
    pub storage: NatsStorage,
    /// Stream replicas. Default 1.
    pub replicas: usize,
    /// Each stream removes messages older than this, seconds (0: no age limit, kept however
    /// old). Default 604800 (7 days).
    pub max_age_s: u64,
    /// Each stream removes its oldest messages while it holds more than this, bytes (0: no
    /// size limit). JetStream reserves this much of the server's storage per stream.
    /// Default 1073741824 (1 GiB).
    pub max_bytes: u64,
    /// The server removes the consumer of a subscription without a group after this long
    /// without a reader (what a crashed node leaves behind), seconds; at least 1.
    /// Default 300.
    pub ephemeral_inactive_s: u64,
    /// The server removes a consumer group's durable consumer after this long without a
    /// reader, seconds (0: never; the group then resumes where it was however long it was
    /// away). A group that comes back after removal starts from the oldest stored message.
    /// Default 2592000 (30 days).
    pub durable_inactive_s: u64,
    /// A delivery not acked within this time is redelivered, milliseconds. Default 30000.
    pub ack_wait_ms: u64,
    /// Deliveries before a message is dead-lettered. Default 5.
    pub max_deliver: u32,
}

impl Default for NatsTransportConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            name: "switchyard".to_owned(),
            streams: Vec::new(),
            storage: NatsStorage::File,
            replicas: 1,
            max_age_s: switchyard_nats::DEFAULT_MAX_AGE.as_secs(),
            max_bytes: switchyard_nats::DEFAULT_MAX_BYTES,
            ephemeral_inactive_s: switchyard_nats::DEFAULT_EPHEMERAL_INACTIVE.as_secs(),
            durable_inactive_s: switchyard_nats::DEFAULT_DURABLE_INACTIVE.as_secs(),
            ack_wait_ms: 30_000,
            max_deliver: 5,
        }
    }
}

impl NatsTransportConfig {
    /// The NATS transport's configuration these settings give (streams, storage, retention,
    /// consumer thresholds; 0 becomes no limit where the key allows it), without a dead-letter
    /// sink. Call it on a validated config: a pattern that does not parse is left out.
    pub fn nats_config(&self) -> switchyard_nats::NatsConfig {
        let mut nc = switchyard_nats::NatsConfig::new(self.url.clone())
            .with_storage(match self.storage {
                NatsStorage::File => switchyard_nats::Storage::File,
                NatsStorage::Memory => switchyard_nats::Storage::Memory,
            })
            .with_ack_wait(Duration::from_millis(self.ack_wait_ms))
            .with_max_deliver(self.max_deliver)
            .with_ephemeral_inactive_threshold(Duration::from_secs(self.ephemeral_inactive_s))
            .with_durable_inactive_threshold(
                (self.durable_inactive_s > 0).then(|| Duration::from_secs(self.durable_inactive_s)),
            );
        nc.name = self.name.clone();
        nc.replicas = self.replicas;
        nc.max_age = (self.max_age_s > 0).then(|| Duration::from_secs(self.max_age_s));
        nc.max_bytes = (self.max_bytes > 0).then_some(self.max_bytes);
        for s in &self.streams {
            let patterns = s
                .patterns
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect::<Vec<_>>();
            nc = nc.with_stream(s.name.clone(), patterns);
        }
        nc
    }
}

/// One JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamConfig {
    /// Stream name (letters, digits, `-`, `_`).
    pub name: String,
    /// Topic patterns it holds.
    pub patterns: Vec<String>,
}

/// JetStream storage kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk.
    #[default]
    File,
    /// In the server's memory.
    Memory,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LoggingConfig {
    /// `text` (default) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info,switchyard_node=debug`. Default `info`.
    /// `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON objects, one per line.
    Json,
}

/// Ingest sources.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IngestConfig {
    /// ZeroMQ PULL endpoints, each feeding one topic (feature `zmq`).
    pub zmq: Vec<ZmqIngestConfig>,
}

/// One ZeroMQ PULL endpoint feeding a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZmqIngestConfig {
    /// Endpoint, e.g. `tcp://127.0.0.1:5555`.
    pub endpoint: String,
    /// Topic every received message is published to.
    pub topic: String,
    /// Bind the endpoint (default) or connect to it.
    #[serde(default = "default_true")]
    pub bind: bool,
    /// Largest message accepted, bytes; larger ones are dead-lettered. Default: the node's
    /// `limits.max_message_bytes`.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Content type given to the messages. Default `application/json`.
    #[serde(default = "default_json")]
    pub content_type: String,
}

fn default_true() -> bool {
    true
}

fn default_json() -> String {
    "application/json".to_owned()
}

/// What `/ready` requires besides a connected transport.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReadinessConfig {
    /// Handlers whose open circuit breaker makes the node not ready.
    pub critical_handlers: Vec<String>,
}

/// The default of `bus.max_hold_ms`: the bus's own default,
/// [`switchyard::DEFAULT_MAX_HOLD`].
pub const DEFAULT_MAX_HOLD_MS: u64 = 300_000;

/// Bus defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BusConfig {
    /// Queue capacity of each subscription. Default 1024.
    pub queue_capacity: usize,
    /// Workers per subscription. Default 1.
    pub workers: usize,
    /// Shutdown drain deadline, milliseconds. Default 10000.
    pub shutdown_timeout_ms: u64,
    /// How long a log or NATS delivery a handler holds (a WebSocket client that has not
    /// acked yet, a slow handler) is kept alive past the transport's ack wait, counted from
    /// when the transport handed it out, milliseconds; past it the transport hands the
    /// delivery out again one ack wait later (`switchyard::BusBuilder::max_hold`). 0 turns
    /// keep-alive off: the ack wait alone decides. Default 300000 (the bus's default).
    pub max_hold_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            workers: 1,
            shutdown_timeout_ms: 10_000,
            max_hold_ms: DEFAULT_MAX_HOLD_MS,
        }
    }
}

/// Payload encryption (`switchyard_contracts::Encryption`): payloads of matching topics are
/// encrypted (XChaCha20-Poly1305) before they reach the transport, so the log's segment files
/// and NATS streams hold ciphertext; handlers, WebSocket subscribers and the gateway see
/// plaintext. A message that does not decrypt (unknown key id, wrong key, plaintext on an
/// encrypted topic) is dead-lettered as it arrived. Nothing is encrypted on the `memory`
/// transport (nothing is at rest).
///
/// From the environment: `SWITCHYARD_ENCRYPTION__TOPICS='["payments.#"]'`,
/// `SWITCHYARD_ENCRYPTION__KEYS__K2=<base64>`, `SWITCHYARD_ENCRYPTION__ACTIVE=k2` (key ids
/// read from variable names are lower-cased: use lower-case ids).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EncryptionConfig {
    /// Topic patterns whose payloads are encrypted (`*` and `#` wildcards).
    pub topics: Vec<String>,
    /// Keys by id: base64 of 32 random bytes. Keep a retired key while messages encrypted
    /// with it may still be read (log, stream, dead letters).
    pub keys: BTreeMap<String, String>,
    /// The id of the key that encrypts; may be left out when there is one key.
    #[serde(default)]
    pub active: Option<String>,
    /// Deliver messages that arrive unencrypted on an encrypted topic instead of
    /// dead-lettering them (while switching encryption on over existing data). Default false.
    #[serde(default)]
    pub accept_plaintext: bool,
}

impl std::fmt::Debug for EncryptionConfig {
    /// Names the keys, never their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("topics", &self.topics)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("accept_plaintext", &self.accept_plaintext)
            .finish()
    }
}

impl EncryptionConfig {
    /// The encryption this section describes; the error names the key at fault.
    pub fn build(&self) -> Result<switchyard_contracts::Encryption, ConfigError> {
        use switchyard_contracts::{Encryption, Keyring};
        let invalid = |key: String, e: switchyard_contracts::EncryptionError| {
            ConfigError::invalid(key, "(hidden)", e.to_string())
        };
        let mut ring = Keyring::new();
        for (id, key) in &self.keys {
            ring = ring
                .with_base64_key(id, key)
                .map_err(|e| invalid(format!("encryption.keys.{id}"), e))?;
        }
        match &self.active {
            Some(id) => {
                ring = ring
                    .with_active(id)
                    .map_err(|e| ConfigError::invalid("encryption.active", id, e.to_string()))?;
            }
            None if self.keys.len() > 1 => {
                return Err(ConfigError::invalid(
                    "encryption.active",
                    "(unset)",
                    "the id of the key that encrypts, required with more than one key",
                ));
            }
            None => {}
        }
        let mut enc = Encryption::new(ring)
            .map_err(|_| ConfigError::invalid("encryption.keys", "{}", "at least one key"))?;
        if self.topics.is_empty() {
            return Err(ConfigError::invalid(
                "encryption.topics",
                "[]",
                "at least one topic pattern",
            ));
        }
        for t in &self.topics {
            enc = enc
                .topic(t)
                .map_err(|e| ConfigError::invalid("encryption.topics", t, e.to_string()))?;
        }
        Ok(enc.accept_plaintext(self.accept_plaintext))
    }
}

/// A configuration that cannot be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file given does not exist.
    #[error("config file {path} not found")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The file or an environment variable could not be parsed, or names an unknown key.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid config: {key} = {value}: {allowed}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_body_bytes`.
        key: String,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

/// Top-level sections the environment may override (`SWITCHYARD_<SECTION>...`).
const SECTIONS: &[&str] = &[
    "listen",
    "transport",
    "auth",
    "limits",
    "ws",
    "retention",
    "tls",
    "logging",
    "ingest",
    "readiness",
    "bus",
    "encryption",
];

impl NodeConfig {
    /// Loads the defaults, then the TOML file at `path` (if given; it must exist), then the
    /// `SWITCHYARD_*` environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_listen(path, None)
    }

    /// [`load`](Self::load), with `listen` (a command line's `--listen`), when given, as the
    /// highest layer: it replaces the file's and `SWITCHYARD_LISTEN`'s address before the
    /// result is validated, so the address judged (a non-loopback one needs auth) is the one
    /// the node listens on, not the one it overrides.
    pub fn load_with_listen(
        path: Option<&Path>,
        listen: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let env = Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
            let first = key.as_str().split('.').next().unwrap_or_default();
            SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
        });
        Self::load_from(path, env, listen)
    }

    /// Loads from a TOML string (plus defaults, no environment) and validates.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::extract(Self::base()?.merge(Toml::string(toml)))
    }

    /// The defaults as the lowest layer, without the transport: the transport's defaults
    /// belong to its kind (a file choosing `kind = "nats"` must not inherit the log's
    /// `data_dir`), so they come from the chosen variant, and `kind` defaults to `log`.
    fn base() -> Result<Figment, ConfigError> {
        let defaults = figment::value::Value::serialize(NodeConfig::default())
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut dict = defaults.into_dict().unwrap_or_default();
        dict.remove("transport");
        Ok(Figment::from(Serialized::defaults(dict)))
    }

    fn load_from(
        path: Option<&Path>,
        env: Env,
        listen: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Self::base()?;
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(env);
        if let Some(listen) = listen {
            figment = figment.merge(Serialized::default("listen", listen.to_string()));
        }
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let figment = figment.join(Serialized::default("transport.kind", "log"));
        let config: NodeConfig = figment.extract().map_err(|e| {
            ConfigError::Parse(transport_error(&figment).unwrap_or_else(|| {
                e.into_iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }))
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// The transport is an internally tagged enum, which serde reads whole, so an error in one of
/// its values names only `transport`. Extracting the chosen kind's own table again gives the
/// error with its key (`transport.max_bytes: invalid value ...`); `None` when the transport
/// table is not what failed.
fn transport_error(figment: &Figment) -> Option<String> {
    let mut dict = figment.find_value("transport").ok()?.into_dict()?;
    let kind = dict.remove("kind")?.into_string()?;
    let table = Figment::from(Serialized::defaults(dict));
    let error = match kind.as_str() {
        "log" => table.extract::<LogTransportConfig>().err(),
        "nats" => table.extract::<NatsTransportConfig>().err(),
        _ => None,
    }?;
    Some(
        error
            .into_iter()
            .map(|e| {
                let key = std::iter::once("transport")
                    .chain(e.path.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".");
                format!("{key}: {}", e.kind)
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}
