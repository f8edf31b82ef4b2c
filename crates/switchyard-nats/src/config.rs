//! Configuration of the NATS transport. Every default is documented on its field.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{DeadLetterSink, Pattern};

/// Default [`NatsConfig::durable_command_stream`].
pub const DEFAULT_DURABLE_COMMAND_STREAM: &str = "SY_COMMANDS";

/// Default [`NatsConfig::max_age`]: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`NatsConfig::max_bytes`]: 1 GiB per stream.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default [`NatsConfig::ephemeral_inactive_threshold`]: 5 minutes.
pub const DEFAULT_EPHEMERAL_INACTIVE: Duration = Duration::from_secs(5 * 60);
/// Default [`NatsConfig::durable_inactive_threshold`]: 30 days.
pub const DEFAULT_DURABLE_INACTIVE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: survives a server restart. The default.
    #[default]
    File,
    /// In the server's memory.
    Memory,
}

/// One JetStream stream, created (or updated) on connect, holding every topic that matches
/// one of `patterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name: letters, digits, `-` and `_` (other characters become `_`).
    pub name: String,
    /// Topics matching any of these go to this stream. Each becomes stream subjects (`a.#`
    /// becomes `a` and `a.>`; a `#` in the middle is widened, see `docs/nats.md`).
    pub patterns: Vec<Pattern>,
}

impl StreamSpec {
    /// A stream named `name` for `patterns`.
    pub fn new(name: impl Into<String>, patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.into_iter().collect(),
        }
    }
}

/// Configuration of a [`NatsTransport`](crate::NatsTransport). Build it with
/// [`NatsConfig::new`] and the `with_*` methods.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server address(es), comma separated. Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Connection name shown by the server. Default: `switchyard`.
    pub name: String,
    /// Streams, created or updated on connect, in match order. A topic that no stream takes
    /// cannot be published. Default: none.
    pub streams: Vec<StreamSpec>,
    /// Storage of the streams. Default: [`Storage::File`].
    pub storage: Storage,
    /// Replicas of each stream (3 in a 3-node cluster). Default: 1.
    pub replicas: usize,
    /// Messages older than this are removed from each stream. `None` keeps them however old
    /// (unlimited: choose it explicitly with [`NatsConfig::with_unlimited_retention`]).
    /// Default: 7 days ([`DEFAULT_MAX_AGE`]).
    pub max_age: Option<Duration>,
    /// Each stream removes its oldest messages while it holds more than this many bytes.
    /// `None`: no size limit. Default: 1 GiB ([`DEFAULT_MAX_BYTES`]).
    pub max_bytes: Option<u64>,
    /// An ephemeral consumer (a subscription without a group) that has had no pull request
    /// for this long is removed by the server: the one a crashed process left behind goes
    /// away by itself (a live subscription always has a pull open, and removes its consumer
    /// when dropped). Default: 5 minutes ([`DEFAULT_EPHEMERAL_INACTIVE`]).
    pub ephemeral_inactive_threshold: Duration,
    /// A durable consumer (a group) that no process has read from for this long is removed
    /// by the server; when the group subscribes again it starts over from the oldest message
    /// the stream still holds. `None` keeps it until deleted with
    /// [`NatsTransport::delete_group`](crate::NatsTransport::delete_group).
    /// Default: 30 days ([`DEFAULT_DURABLE_INACTIVE`]).
    pub durable_inactive_threshold: Option<Duration>,
    /// Window in which JetStream drops a second message with the same `Nats-Msg-Id`.
    /// Default: 2 minutes (JetStream's own default).
    pub duplicate_window: Duration,
    /// A delivery not settled within this time is redelivered. Default: 30 s.
    pub ack_wait: Duration,
    /// Deliveries before a message goes to the dead-letter sink. 0 means unlimited.
    /// Default: 5.
    pub max_deliver: u32,
    /// Unsettled messages a consumer (one group) may have out at once; the server stops
    /// delivering beyond it (backpressure). Default: 1024.
    pub max_ack_pending: usize,
    /// Messages one subscription pulls per request (prefetch). Default: 64.
    pub pull_batch: usize,
    /// How long one pull request waits on the server. A subscription keeps one open; when it
    /// is dropped or the transport closed, it reads that request to its end and hands back
    /// (nacks) what it brought, so this bounds how long that takes. Default: 1 s.
    pub pull_expires: Duration,
    /// How long one publish may take, retries after a lost connection included, before it
    /// fails. Default: 10 s.
    pub publish_timeout: Duration,
    /// How long to wait for one JetStream publish acknowledgement before resending (with
    /// the same `Nats-Msg-Id`, so the server keeps one copy). Default: 2 s.
    pub ack_timeout: Duration,
    /// Commands (publishes, acks) the client buffers while disconnected; when full, callers
    /// wait (and publishes eventually time out). Default: 8192.
    pub reconnect_buffer: usize,
    /// Subject prefix of core request/reply: a request on topic `t` goes to
    /// `<prefix>.t`, outside every stream (a stream capturing the request subject would
    /// answer it with a publish acknowledgement). Default: `_sy.req`.
    pub request_prefix: String,
    /// Subject prefix of commands and requests across processes (`bus.send` /
    /// `bus.request` with no local handler): a command on topic `t` is a core NATS request to
    /// `<prefix>.t`. Default: `_sy.cmd`.
    pub command_prefix: String,
    /// Queue group the command handlers of every process join, so each command is handled
    /// by exactly one of them. Default: `switchyard`.
    pub command_group: String,
    /// Command topics whose commands are durable: instead of a core NATS request (which
    /// needs a handler process running now), `bus.send` / `bus.request` put the command in
    /// the work-queue stream [`durable_command_stream`](Self::durable_command_stream), and
    /// every process with a handler for the topic takes commands from it through one
    /// shared durable consumer. A command sent while no handler process runs is handled
    /// once one starts; each is handled by one process and acknowledged once handled, and
    /// redelivered (after `ack_wait`) when its handler process dies mid-command. The
    /// sender waits for the result as for any command (its deadline, or
    /// [`command_timeout`](Self::command_timeout)); past it the sender gets
    /// `SendError::Timeout`, never `NoHandler`, and the command still runs once. Senders
    /// and handlers must list the same topics. See `docs/nats.md`. Default: none.
    pub durable_commands: Vec<Pattern>,
    /// Name of the work-queue stream holding durable commands, created on connect when
    /// [`durable_commands`](Self::durable_commands) is not empty, with the storage,
    /// replicas and retention limits of the other streams. Default: `SY_COMMANDS`
    /// ([`DEFAULT_DURABLE_COMMAND_STREAM`]).
    pub durable_command_stream: String,
    /// Subject prefix of durable commands: a durable command on topic `t` is stored under
    /// `<prefix>.t`. Must not overlap `command_prefix` or `request_prefix`.
    /// Default: `_sy.dcmd`.
    pub durable_command_prefix: String,
    /// How long `bus.send` (no deadline of its own) waits for a command's result from
    /// another process before `SendError::Timeout`, so a handler process that vanished
    /// mid-command never leaves the sender waiting forever. `bus.request` uses its own
    /// deadline. Default: 30 s.
    pub command_timeout: Duration,
    /// Header whose value is the ordering key. JetStream delivers one consumer's messages in
    /// stream order; the key is kept for the bus's lanes. Default: `ordering-key`.
    pub ordering_header: Option<String>,
    /// Receives messages that reached `max_deliver` (and those stored under a subject that
    /// is not a topic), with the raw message as the envelope payload. Default: none: such
    /// messages go to the transport's own in-memory store,
    /// [`NatsTransport::dead_letters`](crate::NatsTransport::dead_letters) (never dropped).
    pub dead_letters: Option<Arc<dyn DeadLetterSink>>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("streams", &self.streams)
            .field("storage", &self.storage)
            .field("replicas", &self.replicas)
            .field("max_age", &self.max_age)
            .field("max_bytes", &self.max_bytes)
            .field(
                "ephemeral_inactive_threshold",
                &self.ephemeral_inactive_threshold,
            )
            .field(
                "durable_inactive_threshold",
                &self.durable_inactive_threshold,
            )
            .field("duplicate_window", &self.duplicate_window)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("pull_batch", &self.pull_batch)
            .field("pull_expires", &self.pull_expires)
            .field("publish_timeout", &self.publish_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("reconnect_buffer", &self.reconnect_buffer)
            .field("request_prefix", &self.request_prefix)
            .field("command_prefix", &self.command_prefix)
            .field("command_group", &self.command_group)
            .field("command_timeout", &self.command_timeout)
            .field("durable_commands", &self.durable_commands)
            .field("durable_command_stream", &self.durable_command_stream)
            .field("durable_command_prefix", &self.durable_command_prefix)
            .field("ordering_header", &self.ordering_header)
            .field("dead_letters", &self.dead_letters.is_some())
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self::new("nats://127.0.0.1:4222")
    }
}

impl NatsConfig {
    /// Defaults (see each field) for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: "switchyard".to_owned(),
            streams: Vec::new(),
            storage: Storage::File,
            replicas: 1,
            max_age: Some(DEFAULT_MAX_AGE),
            max_bytes: Some(DEFAULT_MAX_BYTES),
            ephemeral_inactive_threshold: DEFAULT_EPHEMERAL_INACTIVE,
            durable_inactive_threshold: Some(DEFAULT_DURABLE_INACTIVE),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1024,
            pull_batch: 64,
            pull_expires: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(2),
            reconnect_buffer: 8192,
            request_prefix: "_sy.req".to_owned(),
            command_prefix: "_sy.cmd".to_owned(),
            command_group: "switchyard".to_owned(),
            command_timeout: Duration::from_secs(30),
            durable_commands: Vec::new(),
            durable_command_stream: DEFAULT_DURABLE_COMMAND_STREAM.to_owned(),
            durable_command_prefix: "_sy.dcmd".to_owned(),
            ordering_header: Some("ordering-key".to_owned()),
            dead_letters: None,
        }
    }

    /// Adds a stream for the topics matching `patterns`.
    pub fn with_stream(
        mut self,
        name: impl Into<String>,
        patterns: impl IntoIterator<Item = Pattern>,
    ) -> Self {
        self.streams.push(StreamSpec::new(name, patterns));
        self
    }

    /// Sets the storage of the streams.
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the maximum age of stored messages.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Sets the size limit of each stream, bytes.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Removes the age and size limits of the streams: they keep every message until it is
    /// deleted by other means. For streams that must never lose a message to retention.
    pub fn with_unlimited_retention(mut self) -> Self {
        self.max_age = None;
        self.max_bytes = None;
        self
    }

    /// Sets after how long without a pull request the server removes an ephemeral consumer.
    pub fn with_ephemeral_inactive_threshold(mut self, threshold: Duration) -> Self {
        self.ephemeral_inactive_threshold = threshold;
        self
    }

    /// Sets after how long without a reader the server removes a group's durable consumer
    /// (`None`: never; remove it with
    /// [`NatsTransport::delete_group`](crate::NatsTransport::delete_group)).
    pub fn with_durable_inactive_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.durable_inactive_threshold = threshold;
        self
    }

    /// Sets the ack wait.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries (0: unlimited).
    pub fn with_max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// Sets the per-consumer limit of unsettled messages.
    pub fn with_max_ack_pending(mut self, n: usize) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// Sets the pull batch (prefetch) of each subscription.
    pub fn with_pull_batch(mut self, n: usize) -> Self {
        self.pull_batch = n;
        self
    }

    /// Sets how long one pull request waits on the server (at least 10 ms).
    pub fn with_pull_expires(mut self, expires: Duration) -> Self {
        self.pull_expires = expires;
        self
    }

    /// Sets the overall publish timeout.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the wait for one publish acknowledgement before resending.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the number of commands buffered while disconnected.
    pub fn with_reconnect_buffer(mut self, n: usize) -> Self {
        self.reconnect_buffer = n;
        self
    }

    /// Sets how long a command sent without a deadline waits for another process's
    /// result.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Makes the commands of the topics matching `patterns` durable (see
    /// [`durable_commands`](Self::durable_commands)).
    pub fn with_durable_commands(mut self, patterns: impl IntoIterator<Item = Pattern>) -> Self {
        self.durable_commands.extend(patterns);
        self
    }

    /// Sets the name of the work-queue stream of durable commands.
    pub fn with_durable_command_stream(mut self, name: impl Into<String>) -> Self {
        self.durable_command_stream = name.into();
        self
    }

    /// Sets the dead-letter sink.
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }
}
