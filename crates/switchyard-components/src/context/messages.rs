//! The messages a request context publishes: status updates, error reports and completions.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{Message, MessageId};

use super::{RequestId, RequestState};
use crate::role::Role;

/// Published on `<domain>.status.update` at every transition (and at creation, `from: None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The request.
    pub request_id: RequestId,
    /// Its flow.
    pub correlation_id: MessageId,
    /// Owner component.
    pub component: SmolStr,
    /// Owner role.
    pub role: Role,
    /// Owner domain.
    pub domain: SmolStr,
    /// Action.
    pub action: SmolStr,
    /// Previous state (`None` at creation).
    pub from: Option<RequestState>,
    /// New state.
    pub to: RequestState,
    /// Why (for failures and cancellations).
    pub reason: Option<String>,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

impl Message for StatusUpdate {
    const TOPIC: &'static str = "component.status.update";
}

/// Published on `<domain>.error` when a context fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The request.
    pub request_id: RequestId,
    /// Its flow.
    pub correlation_id: MessageId,
    /// Owner component.
    pub component: SmolStr,
    /// Owner role.
    pub role: Role,
    /// Owner domain.
    pub domain: SmolStr,
    /// Action.
    pub action: SmolStr,
    /// Class of the error (`ValidationError`, `Timeout`, ...).
    pub error_type: String,
    /// What happened.
    pub message: String,
    /// True when this failure only passes on the failure of a lower layer (the error handler
    /// applies its retry policy to original failures only).
    pub propagated: bool,
    /// Whether retrying may help.
    pub retryable: bool,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

impl Message for ErrorReport {
    const TOPIC: &'static str = "component.error";
}

/// Error details in a failed [`Completion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Class of the error.
    pub error_type: String,
    /// What happened.
    pub message: String,
    /// Whether retrying may help.
    pub retryable: bool,
}

/// Whether a finished request succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletionStatus {
    /// It completed; `result` is set.
    Completed,
    /// It failed (or timed out); `error` is set.
    Failed,
}

/// Published on `<domain>.<action>.<result phase of the owner's role>` when a context ends in
/// Completed or Failed: the result flowing back up one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion<T> {
    /// The request.
    pub request_id: RequestId,
    /// Its flow.
    pub correlation_id: MessageId,
    /// Owner component.
    pub component: SmolStr,
    /// Owner role.
    pub role: Role,
    /// Owner domain.
    pub domain: SmolStr,
    /// Action.
    pub action: SmolStr,
    /// The request context (of the layer above) whose message started this one, taken from
    /// the [`REQUEST_HEADER`] of that message.
    pub parent_request: Option<RequestId>,
    /// Completed or failed.
    pub status: CompletionStatus,
    /// The result, when completed.
    pub result: Option<T>,
    /// The error, when failed.
    pub error: Option<ErrorInfo>,
    /// Time from creation to the end.
    pub duration_ms: u64,
    /// The context's metadata at the end.
    pub metadata: BTreeMap<String, String>,
}

impl<T> Completion<T> {
    /// True when completed.
    pub fn is_ok(&self) -> bool {
        self.status == CompletionStatus::Completed
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for Completion<T> {
    const TOPIC: &'static str = "component.result.complete";
}
