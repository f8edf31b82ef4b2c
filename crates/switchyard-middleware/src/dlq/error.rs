use std::path::PathBuf;

use switchyard_core::{MessageId, PublishError};

/// Opening a file-backed dead-letter queue failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenDlqError {
    /// The file or its directory could not be created, read or written.
    #[error("cannot open dead-letter file {path}: {source}")]
    Io {
        /// The journal path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Changing a dead-letter queue (remove, purge, compact) failed. The in-memory view was
/// still changed; the journal may keep the entry until the next successful write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqWriteError {
    /// Writing the journal failed.
    #[error("cannot write dead-letter journal: {0}")]
    Io(#[from] std::io::Error),
    /// A record could not be encoded.
    #[error("cannot encode dead-letter record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Replaying one dead letter failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No entry for this message id.
    #[error("no dead letter for message {0}")]
    NotFound(MessageId),
    /// The republish target refused the message; the entry stays in the queue.
    #[error("re-publishing {id} failed: {source}")]
    Publish {
        /// The message.
        id: MessageId,
        /// The publish error.
        #[source]
        source: PublishError,
    },
    /// The message was re-published but its entry could not be removed.
    #[error("re-published {id} but could not remove its entry: {source}")]
    Remove {
        /// The message.
        id: MessageId,
        /// The write error.
        #[source]
        source: DlqWriteError,
    },
}
