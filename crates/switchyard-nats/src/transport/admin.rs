//! The kind of a failed JetStream admin call (creating or deleting a consumer, deleting a
//! stream), by cause: no answer in time is [`TransportErrorKind::Timeout`]; no answer at all
//! (not connected, no responders, the request not sent) and a cluster the server says is not
//! available now are [`TransportErrorKind::Unavailable`] (retrying later may help); an answer
//! of the server refusing the call (an API error: limits, permissions, configuration) is
//! [`TransportErrorKind::Rejected`] (retrying the same call will not help).

use async_nats::jetstream::context::{DeleteStreamError, DeleteStreamErrorKind};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use switchyard_core::TransportErrorKind;

/// An error the server answered with: a refusal, unless it says the cluster is not available
/// now (no quorum, no peers, incomplete).
fn api_error_kind(e: &jetstream::Error) -> TransportErrorKind {
    let code = e.error_code();
    if code == ErrorCode::CLUSTER_NOT_AVAILABLE
        || code == ErrorCode::CLUSTER_NO_PEERS
        || code == ErrorCode::CLUSTER_INCOMPLETE
    {
        TransportErrorKind::Unavailable
    } else {
        TransportErrorKind::Rejected
    }
}

/// Creating or deleting a consumer failed.
pub(crate) fn consumer_error_kind(e: &ConsumerError) -> TransportErrorKind {
    match e.kind() {
        ConsumerErrorKind::TimedOut => TransportErrorKind::Timeout,
        ConsumerErrorKind::Request => TransportErrorKind::Unavailable,
        ConsumerErrorKind::JetStream(j) => api_error_kind(&j),
        // A name or a consumer type the client refuses, an answer it cannot use.
        ConsumerErrorKind::InvalidConsumerType
        | ConsumerErrorKind::InvalidName
        | ConsumerErrorKind::Other => TransportErrorKind::Rejected,
    }
}

/// Deleting a stream failed.
pub(crate) fn delete_stream_error_kind(e: &DeleteStreamError) -> TransportErrorKind {
    match e.kind() {
        DeleteStreamErrorKind::Request => TransportErrorKind::Unavailable,
        DeleteStreamErrorKind::JetStream(j) => api_error_kind(&j),
        DeleteStreamErrorKind::EmptyName | DeleteStreamErrorKind::InvalidStreamName => {
            TransportErrorKind::Rejected
        }
    }
}
