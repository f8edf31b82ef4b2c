//! Error types: one enum per operation, with a small `Copy` kind where callers branch.

use std::path::PathBuf;

use switchyard_core::{TransportError, TransportErrorKind};

/// What is wrong with a damaged record or segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CorruptionKind {
    /// The segment file does not start with the segment magic.
    BadMagic,
    /// A record's checksum does not match its bytes.
    BadChecksum,
    /// A record's length is zero or larger than the limit.
    BadLength,
    /// A record carries an offset other than the one its position implies.
    BadOffset,
    /// A record ends past the end of its (closed) segment.
    Truncated,
    /// A record's checksum matches but its envelope cannot be decoded.
    BadEncoding,
    /// Segments do not follow one another (offsets missing between two segments).
    Gap,
    /// A segment the stream's manifest says exists is gone: the oldest (offsets before the
    /// remaining ones are missing) or the newest (its offsets would be given out again).
    /// `path` and `offset` name the missing file and its base offset.
    MissingSegment,
    /// The stream's manifest (`MANIFEST`, the list of its oldest and newest segment) is
    /// damaged, so the segments cannot be checked against it.
    BadManifest,
}

/// Damaged data found somewhere other than the tail of the newest segment, where it cannot
/// be the result of a torn write and is never skipped silently.
#[derive(Debug, Clone, thiserror::Error)]
#[error("corrupt log segment {path:?} at byte {position} (offset {offset}): {kind:?}")]
pub struct Corruption {
    /// The segment file.
    pub path: PathBuf,
    /// Byte position in the file where the damaged record starts.
    pub position: u64,
    /// Offset the damaged record should have had.
    pub offset: u64,
    /// What is wrong.
    pub kind: CorruptionKind,
}

/// Opening a log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is not usable.
    #[error("invalid log config: {0}")]
    InvalidConfig(String),
    /// Another process (or another open handle) holds the log's lock.
    #[error("log {path:?} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("i/o error on {path:?}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged before the tail.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The background writer thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Reading records (inspect API) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No stream has this name.
    #[error("no stream named {0:?}")]
    UnknownStream(String),
    /// A segment could not be read.
    #[error("i/o error on {path:?}: {source}")]
    Io {
        /// The segment file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A record is damaged.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

impl From<ReadError> for TransportError {
    fn from(e: ReadError) -> Self {
        let kind = match &e {
            ReadError::UnknownStream(_) => TransportErrorKind::Rejected,
            ReadError::Io { .. } => TransportErrorKind::Io,
            ReadError::Corrupt(_) => TransportErrorKind::Corrupt,
        };
        TransportError::with_source(kind, "log read failed", e)
    }
}

/// Why the writer could not append a batch (sent back to publishers).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AppendError {
    #[error("log write failed: {0}")]
    Io(String),
}

impl From<AppendError> for TransportError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Io(m) => TransportError::new(TransportErrorKind::Io, m),
        }
    }
}
