//! The messages a request context publishes: status updates, error reports and completions.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{Envelope, Kind, Message, MessageId, Topic, TopicError};

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
    /// True when the component's handler failed (returned an error or panicked) on a
    /// delivery that is not the last: the bus delivers the message again, so this failure
    /// does not fail the flow (no failed completion follows it; the next delivery's context
    /// reports the outcome). Such a report is `propagated` (the bus, not the error handler,
    /// retries the message).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bus_retries: bool,
    /// True when this is the component's own failure although `propagated` is set: its
    /// handler returned an error or panicked (`HandlerError` / `HandlerAborted`). The bus
    /// retries such a message itself, so the error handler skips it as it does a propagated
    /// one, but it counts for the component's health.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handler_failure: bool,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The message the component was handling when it failed: set on original failures
    /// whose message has a JSON payload, so that the error handler can dead-letter the very
    /// request (whose replay re-runs the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_request: Option<FailedRequest>,
}

impl Message for ErrorReport {
    const TOPIC: &'static str = "component.error";
}

/// A copy of the message a component failed on, carried by its [`ErrorReport`]: enough to
/// publish it again as it was (same id, topic, kind, headers and payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRequest {
    /// Its id (kept by a replay).
    pub id: MessageId,
    /// Its topic.
    pub topic: String,
    /// Event, command or request.
    pub kind: Kind,
    /// The message that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<MessageId>,
    /// Its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Its content type.
    pub content_type: String,
    /// Its type name, for upcasting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Its type version.
    #[serde(default)]
    pub type_version: u32,
    /// Its payload, as JSON.
    pub payload: serde_json::Value,
}

impl FailedRequest {
    /// A copy of `env`; `None` when its payload is not JSON (it is not carried then).
    pub fn of(env: &Envelope) -> Option<Self> {
        let payload = serde_json::from_slice(&env.payload).ok()?;
        Some(Self {
            id: env.id.clone(),
            topic: env.topic.as_str().to_owned(),
            kind: env.kind,
            causation_id: env.causation_id().cloned(),
            source: env.source().map(str::to_owned),
            headers: env
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            content_type: env.content_type().to_owned(),
            type_name: env.type_name.as_ref().map(ToString::to_string),
            type_version: env.type_version,
            payload,
        })
    }

    /// The message again, in the flow `correlation_id`.
    pub fn to_envelope(&self, correlation_id: MessageId) -> Result<Envelope, TopicError> {
        let payload = serde_json::to_vec(&self.payload).unwrap_or_default();
        let mut env = Envelope::new(Topic::new(&self.topic)?, payload)
            .with_kind(self.kind)
            .with_correlation_id(correlation_id);
        env.id = self.id.clone();
        env.set_causation_id(self.causation_id.clone());
        env.set_source(self.source.as_deref().map(Into::into));
        for (k, v) in &self.headers {
            env.headers_mut().insert(k.as_str(), v.as_str());
        }
        env.set_content_type(self.content_type.as_str());
        env.type_name = self.type_name.as_deref().map(Into::into);
        env.type_version = self.type_version;
        Ok(env)
    }
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

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Message for Completion<T> {
    const TOPIC: &'static str = "component.result.complete";
}
