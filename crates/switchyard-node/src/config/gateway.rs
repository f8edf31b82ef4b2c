//! The gateway's sections of [`NodeConfig`]: `[auth]` (tokens, JWT, principals), `[limits]`,
//! `[ws]`, `[retention]` and `[tls]`. Re-exported from `config`.

use super::*;

/// Authentication and authorization.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Require a bearer token or JWT on every `/v1` call. Default `false`: every caller is
    /// the anonymous principal with every grant (refused on a non-loopback address).
    pub enabled: bool,
    /// Static bearer tokens, stored as SHA-256 hashes.
    pub tokens: Vec<TokenConfig>,
    /// JWT verification; the `sub` claim names the principal.
    pub jwt: Option<JwtConfig>,
    /// Principals and their grants.
    pub principals: Vec<PrincipalConfig>,
}

/// A static bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal this token authenticates as.
    pub principal: String,
    /// Lower-case hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` or `RS256`.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (prefer `secret_env`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Name of an environment variable holding the HS256 secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// RS256: path of the PEM public key.
    #[serde(default)]
    pub public_key_pem: Option<PathBuf>,
    /// Required `iss`, if set: a JWT without `iss` or with another value is refused.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`, if set: a JWT without `aud` or without this value in it is refused.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and on `nbf` (checked when present), seconds; also how
    /// long past `exp` a WebSocket opened with the JWT stays open. Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_leeway() -> u64 {
    30
}

/// Supported JWT algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 with a shared secret.
    HS256,
    /// RSA SHA-256 with a public key.
    RS256,
}

/// One principal's grants: topic patterns per action.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Name (the token's `principal`, the JWT's `sub`).
    pub name: String,
    /// Topics it may publish to.
    pub publish: Vec<String>,
    /// Patterns it may subscribe to (a subscription pattern must lie inside one of them).
    pub subscribe: Vec<String>,
    /// Command topics it may send to, request, or handle remotely.
    pub send: Vec<String>,
    /// Registry, dead letters, topology, traces, status, stats.
    pub admin: bool,
}

/// Size, time and rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Largest HTTP request body, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest message payload (HTTP body, WebSocket publish, ZeroMQ ingest), bytes.
    /// Default 1 MiB.
    pub max_message_bytes: usize,
    /// Default deadline of `POST /v1/request`, milliseconds. Default 5000.
    pub default_request_timeout_ms: u64,
    /// Largest `timeout_ms` a request may ask for, milliseconds. Default 60000.
    pub max_request_timeout_ms: u64,
    /// Deadline of `POST /v1/send`, milliseconds (a command with no answer by then gets 504).
    /// Default 30000.
    pub send_timeout_ms: u64,
    /// Per-principal rate of messages put on the bus: publishes (HTTP, WebSocket, each
    /// message of a `publish_batch`), sends and requests (HTTP and WebSocket) all take from
    /// the principal's one bucket; over it, HTTP answers 429 `rate_limited` and WebSocket
    /// the `error` op with that kind. Default: none.
    pub publish_rate: Option<RateConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            default_request_timeout_ms: 5_000,
            max_request_timeout_ms: 60_000,
            send_timeout_ms: 30_000,
            publish_rate: None,
        }
    }
}

/// A token-bucket rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained messages per second (publishes, sends and requests together).
    pub per_second: u32,
    /// Messages allowed back to back. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// WebSocket settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WsConfig {
    /// Outbound messages buffered per connection before the slow-client policy applies.
    /// Default 1024.
    pub outbound_buffer: usize,
    /// What happens when a client does not read fast enough.
    pub slow_client: SlowClientPolicy,
    /// Largest incoming frame, bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Ping interval, milliseconds (0: no pings). Default 30000.
    pub ping_interval_ms: u64,
    /// Connections open at once, all clients together. Default 10000.
    pub max_connections: usize,
    /// Connections one principal (one token's or JWT subject's name; with auth off every
    /// client is `anonymous`) may have open at once; past it the upgrade is refused as past
    /// `max_connections`. Default: none of its own (`max_connections` is the only limit).
    /// At least 1, at most `max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_principal: Option<usize>,
}

impl WsConfig {
    /// The connections one principal may have open: `max_connections_per_principal`, or
    /// `max_connections` when it is not set.
    pub fn per_principal_limit(&self) -> usize {
        self.max_connections_per_principal
            .unwrap_or(self.max_connections)
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            outbound_buffer: 1024,
            slow_client: SlowClientPolicy::DropOldest,
            max_frame_bytes: 1024 * 1024,
            ping_interval_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_principal: None,
        }
    }
}

/// What to do with a WebSocket client whose outbound buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowClientPolicy {
    /// Drop the oldest buffered message, count it and tell the client (`{"op":"dropped"}`).
    #[default]
    DropOldest,
    /// Close the connection with code 1008 and a reason.
    Disconnect,
}

/// How much history is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionConfig {
    /// Dead letters kept (oldest evicted beyond). Default 10000.
    pub dead_letters: usize,
    /// Envelopes, and as many handler calls, kept for `/v1/trace` (0: tracing off). Default
    /// 10000.
    pub trace_messages: usize,
    /// Log transport: remove the oldest closed segments while a stream is larger than this,
    /// bytes (0: no size limit). Default 1073741824 (1 GiB).
    pub log_max_bytes: u64,
    /// Log transport: remove closed segments last written longer ago than this, seconds (0:
    /// no age limit). Default 604800 (7 days).
    pub log_max_age_s: u64,
}

impl RetentionConfig {
    /// The log transport's retention these settings give (0 becomes no limit).
    pub fn log_retention(&self) -> switchyard_log::Retention {
        switchyard_log::Retention {
            max_bytes: (self.log_max_bytes > 0).then_some(self.log_max_bytes),
            max_age: (self.log_max_age_s > 0).then(|| Duration::from_secs(self.log_max_age_s)),
            delete_consumed: false,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            dead_letters: 10_000,
            trace_messages: 10_000,
            log_max_bytes: switchyard_log::DEFAULT_MAX_BYTES,
            log_max_age_s: switchyard_log::DEFAULT_MAX_AGE.as_secs(),
        }
    }
}

/// HTTPS with rustls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}
