//! Rust errors → the typed Python exceptions of `switchyard.errors`.
//!
//! The exception classes are plain Python (so they can inherit from several bases, e.g.
//! `InvalidTopic` is also a `ValueError`); this module builds instances of them with the
//! error's fields as attributes.

use pyo3::BoundObject;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use switchyard::{
    BuildError, CloseError, CodecDirection, PublishError, SendError, SubscribeError, TooLarge,
    TransportError, TransportErrorKind,
};

/// Builds `switchyard.errors.<class>(message, **fields)` as a `PyErr`.
pub(crate) fn raise(
    py: Python<'_>,
    class: &str,
    message: String,
    fields: &[(&str, Py<PyAny>)],
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("switchyard.errors")?.getattr(class)?;
        let kwargs = PyDict::new(py);
        for (k, v) in fields {
            kwargs.set_item(*k, v.bind(py))?;
        }
        Ok(PyErr::from_value(cls.call((message,), Some(&kwargs))?))
    };
    build().unwrap_or_else(|e| e)
}

fn obj<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> Py<PyAny> {
    match v.into_pyobject(py) {
        Ok(o) => o.into_any().unbind(),
        Err(_) => py.None(),
    }
}

fn kind_name(kind: TransportErrorKind) -> &'static str {
    match kind {
        TransportErrorKind::Unavailable => "unavailable",
        TransportErrorKind::Timeout => "timeout",
        TransportErrorKind::Rejected => "rejected",
        TransportErrorKind::Io => "io",
        TransportErrorKind::Corrupt => "corrupt",
        TransportErrorKind::Closed => "closed",
        TransportErrorKind::Unsupported => "unsupported",
    }
}

/// A transport failure.
pub(crate) fn transport_error(py: Python<'_>, e: &TransportError) -> PyErr {
    raise(
        py,
        "TransportError",
        e.to_string(),
        &[("kind", obj(py, kind_name(e.kind)))],
    )
}

/// `publish` failed.
pub(crate) fn publish_error(py: Python<'_>, e: PublishError) -> PyErr {
    let text = e.to_string();
    match e {
        PublishError::InvalidTopic(t) => raise(
            py,
            "InvalidTopic",
            text,
            &[("kind", obj(py, format!("{:?}", t.kind)))],
        ),
        PublishError::Encode(_) => raise(py, "EncodeFailed", text, &[]),
        PublishError::Full {
            subscriptions,
            delivered,
        } => {
            let subs = PyList::new(py, subscriptions)
                .map(|l| l.into_any().unbind())
                .unwrap_or_else(|_| py.None());
            raise(
                py,
                "QueueFull",
                text,
                &[("subscriptions", subs), ("delivered", obj(py, delivered))],
            )
        }
        PublishError::ShuttingDown => raise(py, "ShuttingDown", text, &[]),
        PublishError::TooLarge(t) => too_large(py, text, t),
        PublishError::Transport(t) => transport_error(py, &t),
        // Refused by a hook or a layer rule, and anything added later.
        _ => raise(py, "Refused", text, &[]),
    }
}

/// `send` / `request` failed.
pub(crate) fn send_error(py: Python<'_>, e: SendError) -> PyErr {
    let text = e.to_string();
    match e {
        SendError::InvalidTopic(t) => raise(
            py,
            "InvalidTopic",
            text,
            &[("kind", obj(py, format!("{:?}", t.kind)))],
        ),
        SendError::Codec(c) if c.direction == CodecDirection::Decode => {
            raise(py, "DecodeFailed", text, &[])
        }
        SendError::Codec(_) => raise(py, "EncodeFailed", text, &[]),
        SendError::NoHandler { topic } => {
            raise(py, "NoHandler", text, &[("topic", obj(py, topic.as_str()))])
        }
        SendError::Full { handler } => {
            let subs = PyList::new(py, [handler])
                .map(|l| l.into_any().unbind())
                .unwrap_or_else(|_| py.None());
            raise(
                py,
                "QueueFull",
                text,
                &[("subscriptions", subs), ("delivered", obj(py, 0usize))],
            )
        }
        SendError::ShuttingDown => raise(py, "ShuttingDown", text, &[]),
        SendError::Rejected { reason } => {
            raise(py, "Rejected", text, &[("reason", obj(py, reason))])
        }
        SendError::Failed { error, attempts } => raise(
            py,
            "HandlerFailed",
            text,
            &[("error", obj(py, error)), ("attempts", obj(py, attempts))],
        ),
        SendError::Timeout { deadline } => raise(
            py,
            "RequestTimeout",
            text,
            &[("timeout", obj(py, deadline.as_secs_f64()))],
        ),
        // The handler could not decode the command: the bus answers `NotProcessed` with the
        // codec error's text.
        SendError::NotProcessed(reason) if reason.starts_with("cannot decode") => {
            raise(py, "DecodeFailed", text, &[])
        }
        SendError::NotProcessed(_) => raise(py, "NotProcessed", text, &[]),
        SendError::TooLarge(t) => too_large(py, text, t),
        SendError::Transport(t) => transport_error(py, &t),
        _ => raise(py, "SwitchyardError", text, &[]),
    }
}

/// A message over a size limit, with both sizes and whose limit it is.
fn too_large(py: Python<'_>, text: String, t: TooLarge) -> PyErr {
    raise(
        py,
        "TooLarge",
        text,
        &[
            ("size", obj(py, t.size)),
            ("limit", obj(py, t.limit)),
            ("limit_of", obj(py, t.limit_of)),
        ],
    )
}

/// Registering a subscription or handler failed.
pub(crate) fn subscribe_error(py: Python<'_>, e: SubscribeError) -> PyErr {
    let text = e.to_string();
    match e {
        SubscribeError::InvalidPattern(t) => raise(
            py,
            "InvalidTopic",
            text,
            &[("kind", obj(py, format!("{:?}", t.kind)))],
        ),
        SubscribeError::DuplicateHandler { topic, existing } => raise(
            py,
            "DuplicateHandler",
            text,
            &[
                ("topic", obj(py, topic.as_str())),
                ("existing", obj(py, existing)),
            ],
        ),
        SubscribeError::InvalidConfig(_) => raise(py, "InvalidConfig", text, &[]),
        SubscribeError::ShuttingDown => raise(py, "ShuttingDown", text, &[]),
        SubscribeError::Transport(t) => transport_error(py, &t),
        _ => raise(py, "SwitchyardError", text, &[]),
    }
}

/// `shutdown` failed.
pub(crate) fn close_error(py: Python<'_>, e: CloseError) -> PyErr {
    let text = e.to_string();
    match e {
        CloseError::AlreadyShuttingDown => raise(py, "ShuttingDown", text, &[]),
        CloseError::Transport(t) => transport_error(py, &t),
        _ => raise(py, "SwitchyardError", text, &[]),
    }
}

/// Building the bus failed (a setting out of range).
pub(crate) fn build_error(py: Python<'_>, e: BuildError) -> PyErr {
    raise(py, "InvalidConfig", e.to_string(), &[])
}
