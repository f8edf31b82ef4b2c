//! Errors: [`ApiError`] (what a gateway call answers, rendered as the wire contract's error
//! JSON) and [`NodeError`] (what starting or serving a node can fail with).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchyard::{PublishError, SendError, TopicError};

use crate::config::ConfigError;

/// The `kind` of an error answer: a stable, snake_case name clients branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the topic or pattern breaks a topic rule (named in the message).
    InvalidTopic,
    /// 400: the body is not valid JSON (the parse error is in the message).
    MalformedJson,
    /// 400: a request header has an invalid value.
    BadHeader,
    /// 400: a query parameter has an invalid value.
    BadQuery,
    /// 400: the JSON body is valid JSON but not what the call takes.
    BadRequest,
    /// 401: no credentials, or credentials that do not verify.
    Unauthenticated,
    /// 403: authenticated, but the principal lacks the grant.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 404: no handler is registered for the command topic.
    NoHandler,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 413: the body or message is larger than the limit named in the message.
    TooLarge,
    /// 415: the content type is not accepted here.
    UnsupportedContentType,
    /// 422: the message does not match the registered schema of its topic (validation
    /// `enforce`); it was dead-lettered with the validation errors.
    InvalidMessage,
    /// 422: the handler failed after its attempts.
    HandlerFailed,
    /// 422: the handler rejected the command.
    HandlerRejected,
    /// 429: the principal's message rate (`limits.publish_rate`: publishes, sends and
    /// requests together) is exceeded.
    RateLimited,
    /// 503: the node is shutting down.
    ShuttingDown,
    /// 503: a queue is full (backpressure).
    QueueFull,
    /// 503: the transport is not connected or a critical breaker is open.
    NotReady,
    /// 504: the deadline passed before a reply.
    Timeout,
    /// 500: a fault of the node itself (never a client mistake).
    Internal,
}

impl ErrorKind {
    /// The HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidTopic
            | Self::MalformedJson
            | Self::BadHeader
            | Self::BadQuery
            | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::NoHandler => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidMessage | Self::HandlerFailed | Self::HandlerRejected => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::QueueFull | Self::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::MalformedJson => "malformed_json",
            Self::BadHeader => "bad_header",
            Self::BadQuery => "bad_query",
            Self::BadRequest => "bad_request",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::NoHandler => "no_handler",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "too_large",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::InvalidMessage => "invalid_message",
            Self::HandlerFailed => "handler_failed",
            Self::HandlerRejected => "handler_rejected",
            Self::RateLimited => "rate_limited",
            Self::ShuttingDown => "shutting_down",
            Self::QueueFull => "queue_full",
            Self::NotReady => "not_ready",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

/// An error answer of the gateway: `{"error": {"kind": ..., "message": ...}}` with the
/// kind's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    /// What went wrong, for machines.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The JSON body (also used by the WebSocket `error` op).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                message: self.message.clone(),
            },
        }
    }

    /// An invalid topic, naming the rule broken.
    pub fn topic(e: &TopicError) -> Self {
        Self::new(ErrorKind::InvalidTopic, e.to_string())
    }

    /// The error answer of a publish that failed once its message had an id:
    /// `{"error": {...}, "id": <the message id>}`, so a client that retries (a 503 after the
    /// transport's publish timeout may still have been stored) can publish again with the
    /// same `x-message-id` and be deduplicated.
    pub(crate) fn response_with_id(self, id: &str) -> Response {
        let status = self.kind.status();
        let body = serde_json::json!({"error": self.body().error, "id": id});
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(self.kind);
        response
    }
}

/// The error JSON body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The `error` object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case kind.
    pub kind: ErrorKind,
    /// Human-readable text.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut response = (status, Json(self.body())).into_response();
        // Lets the metrics and logging middleware see the kind without parsing the body.
        response.extensions_mut().insert(self.kind);
        response
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let kind = match &e {
            PublishError::InvalidTopic(_) => ErrorKind::InvalidTopic,
            PublishError::Full { .. } => ErrorKind::QueueFull,
            PublishError::ShuttingDown => ErrorKind::ShuttingDown,
            PublishError::Refused(_) | PublishError::LayerViolation(_) => ErrorKind::Forbidden,
            // A command given to a publish: the client's mistake, never a 500.
            PublishError::Encode(_)
            | PublishError::NotAnEvent { .. }
            | PublishError::DelayedCommand { .. } => ErrorKind::BadRequest,
            PublishError::TooLarge(_) => ErrorKind::TooLarge,
            PublishError::Transport(_) => ErrorKind::NotReady,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let kind = match &e {
            SendError::NoHandler { .. } => ErrorKind::NoHandler,
            SendError::Failed { .. } => ErrorKind::HandlerFailed,
            SendError::Rejected { .. } => ErrorKind::HandlerRejected,
            SendError::Timeout { .. } => ErrorKind::Timeout,
            SendError::Full { .. } => ErrorKind::QueueFull,
            SendError::ShuttingDown => ErrorKind::ShuttingDown,
            SendError::InvalidTopic(_) => ErrorKind::InvalidTopic,
            SendError::NotProcessed(_) => ErrorKind::HandlerFailed,
            SendError::Codec(_) => ErrorKind::BadRequest,
            SendError::TooLarge(_) => ErrorKind::TooLarge,
            SendError::Transport(_) => ErrorKind::NotReady,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

/// Starting or serving a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be opened or connected.
    #[error("cannot open the {transport} transport: {message}")]
    Transport {
        /// `log` or `nats`.
        transport: &'static str,
        /// Why.
        message: String,
    },
    /// The bus could not be built.
    #[error("cannot build the bus: {0}")]
    Bus(#[from] switchyard::BuildError),
    /// The dead-letter queue could not be opened.
    #[error("cannot open the dead-letter queue: {0}")]
    DeadLetters(String),
    /// The auth settings could not be loaded (keys, secrets).
    #[error("auth: {0}")]
    Auth(String),
    /// A startup subscription (trace recorder) failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] switchyard::SubscribeError),
    /// An ingest source could not be opened.
    #[error("ingest {endpoint}: {message}")]
    Ingest {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The server failed while serving.
    #[error("serve: {0}")]
    Serve(std::io::Error),
    /// The bus did not shut down cleanly.
    #[error("shutdown: {0}")]
    Shutdown(String),
}
