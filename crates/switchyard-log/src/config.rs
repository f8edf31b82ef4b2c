//! Configuration of a log: where it lives, how topics map to streams, durability, retention
//! and consumer-group behaviour. Every default is documented on its field.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{DeadLetterSink, Pattern};

/// When `publish` counts a record as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `publish` resolves only after the records are on disk (`fdatasync`). Concurrent
    /// publishers share one sync (group commit). The default.
    #[default]
    Always,
    /// `publish` resolves once the records are written to the operating system; the log
    /// syncs at most this long after a write. A machine crash may lose up to this window;
    /// a process crash loses nothing.
    Interval(Duration),
    /// `publish` resolves once written to the operating system; the log syncs only on
    /// [`flush`](crate::LogTransport::flush) and close.
    Never,
}

/// Where a group with no committed offset (or an ungrouped subscription) starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest retained record: a new subscriber sees old messages. The default.
    #[default]
    Earliest,
    /// Only records published after the subscription was made.
    Latest,
}

/// What opening a log does with a damaged record in the newest segment that is followed by
/// good records (damage with nothing good after it is a torn tail and always truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to open with [`OpenError::Corrupt`](crate::OpenError::Corrupt): nothing is
    /// dropped without an operator deciding so. The default.
    #[default]
    Strict,
    /// Truncate the newest segment at the first damaged record, dropping the good records
    /// after it, with a warning. For after a power loss that persisted pages out of order.
    /// Damage in older segments is still an error.
    TruncateNewestSegment,
}

/// One stream: a directory of segments holding every topic that matches one of `patterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name; also its directory name. ASCII letters, digits, `-`, `_` and `.` only.
    pub name: String,
    /// Topics matching any of these go to this stream (the first matching stream wins).
    pub patterns: Vec<Pattern>,
}

impl StreamSpec {
    /// A stream named `name` holding the topics that match `patterns`.
    pub fn new(name: impl Into<String>, patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.into_iter().collect(),
        }
    }
}

/// Default [`Retention::max_age`]: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`Retention::max_bytes`]: 1 GiB per stream.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// How long records are kept. Only whole, closed segments are removed; the segment being
/// written is never removed (so a stream may exceed `max_bytes` by up to one segment, and
/// keep records older than `max_age` while they are in the segment being written).
///
/// The default is bounded (7 days, 1 GiB per stream), so a log never grows forever unless
/// that is chosen explicitly with [`Retention::unlimited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Remove the oldest segments while a stream holds more than this many bytes. `None`: no
    /// size limit. Default: 1 GiB ([`DEFAULT_MAX_BYTES`]).
    pub max_bytes: Option<u64>,
    /// Remove segments whose last write is older than this. `None`: no age limit.
    /// Default: 7 days ([`DEFAULT_MAX_AGE`]).
    pub max_age: Option<Duration>,
    /// Compaction: remove segments every durable consumer group has fully acknowledged (only
    /// when at least one durable group exists). Default: `false`.
    pub delete_consumed: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: Some(DEFAULT_MAX_BYTES),
            max_age: Some(DEFAULT_MAX_AGE),
            delete_consumed: false,
        }
    }
}

impl Retention {
    /// Keeps every record: no size or age limit, no compaction.
    pub fn unlimited() -> Self {
        Self {
            max_bytes: None,
            max_age: None,
            delete_consumed: false,
        }
    }
}

/// Configuration of a [`LogTransport`](crate::LogTransport). Build it with
/// [`LogConfig::new`] and the `with_*` methods.
#[derive(Clone)]
pub struct LogConfig {
    /// Directory holding the log. Created if missing.
    pub dir: PathBuf,
    /// Streams in match order. Default: empty (everything goes to the default stream).
    pub streams: Vec<StreamSpec>,
    /// Stream for topics no spec matches; `None` rejects such publishes.
    /// Default: `Some("default")`.
    pub default_stream: Option<String>,
    /// Durability of `publish`. Default: [`Durability::Always`].
    pub durability: Durability,
    /// A segment is closed and a new one started once it reaches this size. Default: 64 MiB.
    pub segment_bytes: u64,
    /// Largest encoded envelope a publish may write (1 B to 1 GiB). Default: 8 MiB. Records
    /// already in the log are read whatever their size: lowering it does not hide them.
    pub max_record_bytes: u32,
    /// Retention and compaction. Default: [`Retention::default`] (7 days, 1 GiB per stream).
    pub retention: Retention,
    /// How often retention is checked by the writer. Default: 1 s.
    pub retention_check_interval: Duration,
    /// A delivery not settled within this time is redelivered. Default: 30 s.
    pub ack_wait: Duration,
    /// Deliveries of one message before it is dead-lettered (reason `MaxDeliveries`); a
    /// delivery handed back unworked (`Delivery::hand_back`) does not count. Default: 5. 0
    /// means no limit.
    pub max_deliver: u32,
    /// Messages one group hands out and leaves unsettled at most; also the size of its
    /// in-order read-ahead window, and of the look-ahead past keys that are busy (so a group
    /// holds at most twice this many messages in memory). Default: 1024.
    pub max_ack_pending: usize,
    /// Header whose value is the ordering key: within a group, messages with the same key are
    /// handed out one at a time, in log order. `None` turns per-key ordering off.
    /// Default: `Some("ordering-key")`.
    pub ordering_header: Option<String>,
    /// Where groups without a committed offset start. Default: [`StartPosition::Earliest`].
    pub start: StartPosition,
    /// Committed group offsets are written to disk at most this often (and on close).
    /// Default: 100 ms.
    pub commit_interval: Duration,
    /// Damage handling on open. Default: [`Recovery::Strict`].
    pub recovery: Recovery,
    /// Receives messages that reached `max_deliver`. Default: none: such messages go to the
    /// log's own in-memory store, [`LogTransport::dead_letters`](crate::LogTransport::dead_letters)
    /// (never dropped).
    pub dead_letters: Option<Arc<dyn DeadLetterSink>>,
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("dir", &self.dir)
            .field("streams", &self.streams)
            .field("default_stream", &self.default_stream)
            .field("durability", &self.durability)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("retention", &self.retention)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("ordering_header", &self.ordering_header)
            .field("start", &self.start)
            .field("commit_interval", &self.commit_interval)
            .field("recovery", &self.recovery)
            .field("dead_letters", &self.dead_letters.is_some())
            .finish()
    }
}

impl LogConfig {
    /// Defaults (see each field) for a log in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            streams: Vec::new(),
            default_stream: Some("default".to_owned()),
            durability: Durability::Always,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 8 * 1024 * 1024,
            retention: Retention::default(),
            retention_check_interval: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1024,
            ordering_header: Some("ordering-key".to_owned()),
            start: StartPosition::Earliest,
            commit_interval: Duration::from_millis(100),
            recovery: Recovery::Strict,
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

    /// Sets (or with `None` removes) the catch-all stream.
    pub fn with_default_stream(mut self, name: Option<&str>) -> Self {
        self.default_stream = name.map(str::to_owned);
        self
    }

    /// Sets the durability mode.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the segment size at which a new segment is started.
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
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

    /// Sets the read-ahead window of each group.
    pub fn with_max_ack_pending(mut self, n: usize) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// Sets (or with `None` disables) the ordering-key header.
    pub fn with_ordering_header(mut self, header: Option<&str>) -> Self {
        self.ordering_header = header.map(str::to_owned);
        self
    }

    /// Sets where new groups start.
    pub fn with_start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets how often committed offsets are written.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets damage handling on open.
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// Sets the dead-letter sink for messages that reached `max_deliver`.
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }
}

/// True for names usable as a stream directory.
pub(crate) fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
