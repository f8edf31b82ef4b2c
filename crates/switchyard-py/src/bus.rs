//! `NativeBus`: a `switchyard::Bus` driven from Python.
//!
//! Python handlers are `tower` services on the Rust side like any other handler: the bus's
//! worker calls one, which puts an [`Item::Invoke`] in the inbox and waits for the answer the
//! Python side gives through [`PyReply`]. Retries, dead letters, priorities, lanes, batches and
//! shutdown are therefore the Rust bus's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{
    BoxError, Bus, CodecError, Command, Ctx, DeadLetter, DeadLetterReason, Envelope, Kind, Message,
    Outcome, Permanent, Priority, PublishError, Subscription, SubscriptionBuilder, Topic,
    handler_fn,
};
use tokio::sync::oneshot;

use crate::envelope::{PyDeadLetter, PyEnvelope};
use crate::errors;
use crate::inbox::{CancelOnDrop, HandlerResult, Inbox, Item};
use crate::ops::{self, Done, Started};
use crate::transport::NativeTransport;

mod options;
mod prefetch;
mod reply;
use options::{SubOptions, overflow, seconds, sub_overflow};
pub use prefetch::PyReplies;
pub use reply::PyReply;

/// The error a Python handler raised: its type, message and traceback, as text. This text is
/// what the dead letter keeps and what a command's sender sees in `HandlerFailed`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PythonError(pub(crate) String);

/// The Rust handler of a Python subscription: hands each message to the loop and waits.
fn python_handler(inbox: Arc<Inbox>, sub: u64, command: bool) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let inbox = inbox.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            let token = inbox.token();
            let mut guard = CancelOnDrop {
                inbox: inbox.clone(),
                token,
                armed: true,
            };
            let active = inbox.push(Item::Invoke {
                token,
                sub,
                env: Arc::new(env),
                reply: tx,
                command,
            });
            let answer = answer(&inbox, active, rx).await;
            guard.armed = false;
            match answer {
                Ok(result) => result,
                Err(_) => Err::<Outcome, BoxError>(
                    "the Python handler was dropped without answering".into(),
                ),
            }
        }
    })
}

/// The Python answer to an invocation pushed into the inbox (`active`: the loop was draining
/// when it was pushed, so a handler that finishes at once answers within microseconds).
async fn answer(
    inbox: &Inbox,
    active: bool,
    mut rx: oneshot::Receiver<HandlerResult>,
) -> Result<HandlerResult, oneshot::error::RecvError> {
    if active && let Some(Ok(answer)) = inbox.spin_recv(&mut rx) {
        return Ok(answer);
    }
    rx.await
}

/// Raw bytes as a typed message, for the typed-only parts of the bus API (batches, session
/// command handlers): the payload is kept as it came, Python decodes it.
#[derive(Clone, Serialize, Deserialize)]
struct RawPayload(bytes::Bytes);

impl Message for RawPayload {
    const TOPIC: &'static str = "switchyard.python.raw";
    const KIND: Kind = Kind::Command;

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(Self(bytes::Bytes::copy_from_slice(bytes)))
    }
}

impl Command for RawPayload {
    type Output = serde_json::Value;
}

/// A running bus and the inbox its Python handlers are served from.
#[pyclass(name = "NativeBus", module = "switchyard._switchyard", frozen)]
pub struct NativeBus {
    bus: Bus,
    inbox: Arc<Inbox>,
    subs: Mutex<HashMap<u64, Subscription>>,
    next_sub: AtomicU64,
    /// The bus's overflow policy as Python named it (kind, timeout, max_delay in seconds):
    /// a subscription that sets only `overflow_timeout` (or only `overflow`) keeps the rest.
    overflow: (String, f64, f64),
}

/// A header's value as its text: `str()` of it (a number is its digits), refusing `None`
/// (an unset variable would become the text "None") and bytes (their repr, "b'x'").
fn header_value(key: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_none()
        || value.is_instance_of::<pyo3::types::PyBytes>()
        || value.is_instance_of::<pyo3::types::PyByteArray>()
        || value.is_instance_of::<pyo3::types::PyMemoryView>()
    {
        let type_name = value.get_type().name()?.to_string();
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "header {key:?}: a value must be text (or a number), not {type_name}"
        )));
    }
    Ok(value.str()?.to_cow()?.into_owned())
}

/// Builds the envelope of a publish or send.
#[allow(clippy::too_many_arguments)]
fn envelope(
    topic: &str,
    payload: &[u8],
    kind: Kind,
    parent: Option<&Bound<'_, PyEnvelope>>,
    headers: Option<&Bound<'_, PyDict>>,
    priority: Option<u8>,
    type_name: Option<&str>,
    type_version: Option<u32>,
    session: Option<&str>,
) -> Result<Result<Envelope, PublishError>, PyErr> {
    let topic = match Topic::new(topic) {
        Ok(t) => t,
        Err(e) => return Ok(Err(PublishError::InvalidTopic(e))),
    };
    let mut env = Envelope::new(topic, bytes::Bytes::copy_from_slice(payload));
    env.kind = kind;
    if let Some(t) = type_name {
        env.type_name = Some(SmolStr::new(t));
    }
    if let Some(v) = type_version {
        env.type_version = v;
    }
    if let Some(p) = priority {
        env.priority = Priority(p);
    }
    if let Some(h) = headers {
        for (k, v) in h.iter() {
            let k = k.extract::<String>()?;
            let v = header_value(&k, &v)?;
            env.headers_mut().insert(k, v.as_str());
        }
    }
    if let Some(s) = session {
        env.headers_mut()
            .insert(switchyard::session::SESSION_HEADER, s);
    }
    if let Some(parent) = parent {
        // What the bus's task-local does for Rust handlers: causation, correlation, session.
        let parent = &parent.get().inner;
        env = env.caused_by(parent);
        if let Some(s) = parent.header(switchyard::session::SESSION_HEADER)
            && env.header(switchyard::session::SESSION_HEADER).is_none()
        {
            env.headers_mut()
                .insert(switchyard::session::SESSION_HEADER, s);
        }
    }
    Ok(Ok(env))
}

/// Turns a finished operation into its value, or raises its error.
fn finish(py: Python<'_>, done: Done) -> PyResult<Py<PyAny>> {
    let (ok, value) = done.into_py(py)?;
    if ok {
        Ok(value)
    } else {
        Err(PyErr::from_value(value.into_bound(py)))
    }
}

/// `(False, value)` when finished now (or raises), `(True, token)` when Python must await.
fn started(py: Python<'_>, s: Started) -> PyResult<(bool, Py<PyAny>)> {
    match s {
        Started::Now(done) => Ok((false, finish(py, *done)?)),
        Started::Later(token) => Ok((true, token.into_pyobject(py)?.into_any().unbind())),
    }
}

impl NativeBus {
    /// Items as the loop takes them: `(invocations, others)`.
    fn convert<'py>(
        &self,
        py: Python<'py>,
        items: Vec<Item>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let invokes = PyList::empty(py);
        let others = PyList::empty(py);
        for item in items {
            match item {
                Item::Invoke {
                    token,
                    sub,
                    env,
                    reply,
                    command,
                } => {
                    let _ = command;
                    let view = Bound::new(py, PyEnvelope::new(env.clone()))?;
                    let reply = Bound::new(
                        py,
                        PyReply {
                            tx: Mutex::new(Some(reply)),
                            env,
                        },
                    )?;
                    invokes.append((token, sub, view, reply, py.None()))?;
                }
                Item::InvokeMany {
                    token,
                    sub,
                    envs,
                    reply,
                } => {
                    let views = PyList::empty(py);
                    for env in &envs {
                        views.append(Bound::new(py, PyEnvelope::new(env.clone()))?)?;
                    }
                    let replies = Bound::new(
                        py,
                        PyReplies {
                            tx: Mutex::new(Some(reply)),
                            answers: Mutex::new(Vec::with_capacity(envs.len())),
                            envs,
                        },
                    )?;
                    invokes.append((token, sub, views, replies, true))?;
                }
                Item::InvokeBatch {
                    token,
                    sub,
                    env,
                    payloads,
                    reply,
                } => {
                    let view = Bound::new(py, PyEnvelope::new(env.clone()))?;
                    let reply = Bound::new(
                        py,
                        PyReply {
                            tx: Mutex::new(Some(reply)),
                            env,
                        },
                    )?;
                    let list = PyList::new(py, payloads.iter().map(|p| PyBytes::new(py, p)))?;
                    invokes.append((token, sub, view, reply, list))?;
                }
                Item::Cancel { token } => others.append((0u8, token))?,
                Item::Done { token, result } => {
                    let (ok, value) = result.into_py(py)?;
                    others.append((1u8, token, ok, value))?;
                }
            }
        }
        Ok((invokes, others))
    }

    fn register(
        &self,
        py: Python<'_>,
        builder: SubscriptionBuilder,
        sub_id: u64,
        detach: bool,
    ) -> PyResult<u64> {
        let result = py.detach(|| ops::runtime().block_on(builder.start()));
        match result {
            Ok(sub) if detach => {
                sub.detach();
                Ok(sub_id)
            }
            Ok(sub) => {
                self.subs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(sub_id, sub);
                Ok(sub_id)
            }
            Err(e) => Err(errors::subscribe_error(py, e)),
        }
    }
}

#[pymethods]
impl NativeBus {
    /// A bus in memory, or on `transport` (the embedded log, NATS).
    #[new]
    #[pyo3(signature = (*, queue_capacity=1024, workers=1, max_attempts=3, retry_delay=0.1,
        overflow="block", overflow_timeout=1.0, overflow_max_delay=0.01, lifecycle_events=false,
        transport=None, max_message_bytes=switchyard::DEFAULT_MAX_MESSAGE_BYTES))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        queue_capacity: usize,
        workers: usize,
        max_attempts: u32,
        retry_delay: f64,
        overflow: &str,
        overflow_timeout: f64,
        overflow_max_delay: f64,
        lifecycle_events: bool,
        transport: Option<&Bound<'_, NativeTransport>>,
        max_message_bytes: usize,
    ) -> PyResult<Self> {
        let mut builder = Bus::builder()
            .max_message_bytes(max_message_bytes)
            .queue_capacity(queue_capacity)
            .workers(workers)
            .max_attempts(max_attempts)
            .retry_delay(seconds(retry_delay, "retry_delay")?)
            .overflow(self::overflow(
                overflow,
                overflow_timeout,
                overflow_max_delay,
            )?)
            .lifecycle_events(lifecycle_events);
        if let Some(t) = transport {
            builder = t.get().attach(py, builder)?;
        }
        let _entered = ops::runtime().enter();
        let bus = builder.build().map_err(|e| errors::build_error(py, e))?;
        let inbox = Inbox::new().map_err(|e| {
            errors::raise(
                py,
                "SwitchyardError",
                format!("cannot create the inbox: {e}"),
                &[],
            )
        })?;
        Ok(Self {
            bus,
            inbox,
            subs: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
            overflow: (overflow.to_owned(), overflow_timeout, overflow_max_delay),
        })
    }

    /// The descriptor the event loop watches (`loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.inbox.fileno()
    }

    /// Everything the loop has to do: `(invocations, others)`.
    ///
    /// Invocations are `(token, sub, envelope, reply, payloads)` with `payloads` a list of
    /// bytes for batch handlers and `None` otherwise; for a prefetch hand-over they are
    /// `(token, sub, [envelope, ...], replies, True)`. Others are `(0, token)` to cancel an
    /// invocation and `(1, token, ok, value)` for a finished operation.
    ///
    /// The loop is draining from here until `rest`: pushes do not wake it meanwhile.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let items = self.inbox.take();
        self.convert(py, items)
    }

    /// Like `take` while draining: waits up to `spin_us` microseconds (GIL released) for
    /// an item when none is queued. Empty lists when none came.
    fn take_wait<'py>(
        &self,
        py: Python<'py>,
        spin_us: u64,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let inbox = self.inbox.clone();
        let items = py.detach(move || inbox.take_wait(Duration::from_micros(spin_us)));
        self.convert(py, items)
    }

    /// The loop stops draining (after `take`): later items wake it through the descriptor.
    fn rest(&self) {
        self.inbox.rest();
    }

    /// Publishes one event. Returns `None` when every matching subscription has queued it,
    /// raises its error, or returns a token when it has to wait for room. The options may
    /// be passed by position (cheaper than by keyword on this, the hot path).
    #[pyo3(signature = (topic, payload, parent=None, headers=None, priority=None,
        type_name=None, type_version=None, session=None))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &[u8],
        parent: Option<&Bound<'_, PyEnvelope>>,
        headers: Option<&Bound<'_, PyDict>>,
        priority: Option<u8>,
        type_name: Option<&str>,
        type_version: Option<u32>,
        session: Option<&str>,
    ) -> PyResult<Option<u64>> {
        let env = match envelope(
            topic,
            payload,
            Kind::Event,
            parent,
            headers,
            priority,
            type_name,
            type_version,
            session,
        )? {
            Ok(env) => env,
            Err(e) => return Err(errors::publish_error(py, e)),
        };
        let bus = self.bus.clone();
        match ops::start(&self.inbox, async move {
            Done::Published(bus.publish_envelope(env).await)
        }) {
            Started::Now(done) => match *done {
                Done::Published(Ok(())) => Ok(None),
                done => finish(py, done).map(|_| None),
            },
            Started::Later(token) => Ok(Some(token)),
        }
    }

    /// Publishes after `delay` seconds (`wait=False`), or publishes and waits until every
    /// matching handler finished (`wait=True`). Returns `(pending, value_or_token)`.
    #[pyo3(signature = (topic, payload, *, parent=None, headers=None, priority=None,
        type_name=None, type_version=None, session=None, delay=None, wait=false))]
    #[allow(clippy::too_many_arguments)]
    fn publish_special(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &[u8],
        parent: Option<&Bound<'_, PyEnvelope>>,
        headers: Option<&Bound<'_, PyDict>>,
        priority: Option<u8>,
        type_name: Option<&str>,
        type_version: Option<u32>,
        session: Option<&str>,
        delay: Option<f64>,
        wait: bool,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let env = match envelope(
            topic,
            payload,
            Kind::Event,
            parent,
            headers,
            priority,
            type_name,
            type_version,
            session,
        )? {
            Ok(env) => env,
            Err(e) => return Err(errors::publish_error(py, e)),
        };
        let bus = self.bus.clone();
        let s = if wait {
            ops::start(&self.inbox, async move {
                Done::Waited(bus.publish_envelope_and_wait(env).await)
            })
        } else {
            let delay = seconds(delay.unwrap_or(0.0), "delay")?;
            ops::start(&self.inbox, async move {
                let at = switchyard::deadline_after(delay);
                Done::Scheduled(bus.schedule_envelope(at, env).await)
            })
        };
        started(py, s)
    }

    /// Sends a command (or, with `timeout`, a request) and returns `(pending, value_or_token)`;
    /// the value is the reply payload (bytes) or `None`.
    #[pyo3(signature = (topic, payload, *, parent=None, headers=None, priority=None,
        type_name=None, type_version=None, session=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &[u8],
        parent: Option<&Bound<'_, PyEnvelope>>,
        headers: Option<&Bound<'_, PyDict>>,
        priority: Option<u8>,
        type_name: Option<&str>,
        type_version: Option<u32>,
        session: Option<&str>,
        timeout: Option<f64>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let kind = if timeout.is_some() {
            Kind::Request
        } else {
            Kind::Command
        };
        let env = match envelope(
            topic,
            payload,
            kind,
            parent,
            headers,
            priority,
            type_name,
            type_version,
            session,
        )? {
            Ok(env) => env,
            Err(e) => return Err(errors::send_error(py, e.into())),
        };
        let bus = self.bus.clone();
        let s = match timeout {
            None => ops::start(&self.inbox, async move {
                Done::Sent(bus.send_envelope(env).await)
            }),
            Some(t) => {
                let deadline = seconds(t, "timeout")?;
                ops::start(&self.inbox, async move {
                    Done::Sent(bus.request_envelope(env, deadline).await)
                })
            }
        };
        started(py, s)
    }

    /// Registers a Python event subscription (`kind="event"`; with `prefetch` > 1 up to
    /// that many queued messages are handed over at once, answered through `Replies`),
    /// command handler (`kind="command"`) or batch subscription (`batch=(max_size,
    /// max_wait)`). Blocks until
    /// registered (with a transport, until its consumer exists). Returns the subscription id
    /// the loop's invocations name.
    #[pyo3(signature = (name, pattern, kind, *, workers=None, queue_capacity=None,
        overflow=None, overflow_timeout=None, overflow_max_delay=None, max_attempts=None,
        retry_delay=None, priority=None, ordering_header=None, headers=None, filter=None,
        batch=None, session=None, prefetch=1))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &self,
        py: Python<'_>,
        name: &str,
        pattern: &str,
        kind: &str,
        workers: Option<usize>,
        queue_capacity: Option<usize>,
        overflow: Option<&str>,
        overflow_timeout: Option<f64>,
        overflow_max_delay: Option<f64>,
        max_attempts: Option<u32>,
        retry_delay: Option<f64>,
        priority: Option<i32>,
        ordering_header: Option<String>,
        headers: Option<&Bound<'_, PyDict>>,
        filter: Option<Py<PyAny>>,
        batch: Option<(usize, f64)>,
        session: Option<&Bound<'_, PySession>>,
        prefetch: usize,
    ) -> PyResult<u64> {
        let mut header_filters = Vec::new();
        if let Some(h) = headers {
            for (k, v) in h.iter() {
                let k = k.extract::<String>()?;
                let v = header_value(&k, &v)?;
                header_filters.push((k, v));
            }
        }
        let options = SubOptions {
            workers,
            queue_capacity,
            overflow: sub_overflow(
                &self.overflow,
                overflow,
                overflow_timeout,
                overflow_max_delay,
            )?,
            max_attempts,
            retry_delay: retry_delay.map(|d| seconds(d, "retry_delay")).transpose()?,
            priority,
            ordering_header,
            header_filters,
            filter,
        };
        let sub_id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let inbox = self.inbox.clone();
        let guard = session.map(|s| s.get().session.lock().unwrap_or_else(|p| p.into_inner()));
        let session_ref = match &guard {
            Some(g) => match g.as_ref() {
                Some(s) => Some(s),
                None => {
                    return Err(errors::raise(
                        py,
                        "ShuttingDown",
                        "the session has ended".into(),
                        &[],
                    ));
                }
            },
            None => None,
        };
        let builder = match (kind, batch, session_ref) {
            ("event", None, None) if prefetch > 1 => self.bus.subscribe_prefetch(
                name,
                pattern,
                prefetch::python_prefetch_handler(inbox, sub_id),
                prefetch,
            ),
            ("event", None, None) => {
                self.bus
                    .subscribe(name, pattern, python_handler(inbox, sub_id, false))
            }
            ("event", None, Some(s)) => {
                s.subscribe(name, pattern, python_handler(inbox, sub_id, false))
            }
            ("command", None, None) => {
                self.bus
                    .handle_envelope(name, pattern, python_handler(inbox, sub_id, true))
            }
            ("command", None, Some(s)) => {
                // `Session` has no raw-envelope command registration; the typed one with a
                // pass-through payload type does the same job.
                s.handle(move |cmd: RawPayload, ctx: Ctx| {
                    session_command(inbox.clone(), sub_id, cmd, ctx)
                })
                .pattern(pattern)
            }
            ("event", Some((max_size, max_wait)), None) => {
                let wait = seconds(max_wait, "batch max_wait")?;
                self.bus
                    .on_batch(name, move |msgs: Vec<RawPayload>, ctx: Ctx| {
                        batch_call(inbox.clone(), sub_id, msgs, ctx)
                    })
                    .pattern(pattern)
                    .batch(max_size, wait)
            }
            _ => {
                return Err(errors::raise(
                    py,
                    "InvalidConfig",
                    format!(
                        "unsupported subscription: kind {kind:?}, batch {batch:?}, in a session: {}",
                        session.is_some()
                    ),
                    &[],
                ));
            }
        };
        let builder = options.apply(builder);
        drop(guard);
        self.register(py, builder, sub_id, session.is_some())
    }

    /// Unsubscribes (its queue is still drained). False when it was not registered here.
    fn unsubscribe(&self, sub_id: u64) -> bool {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sub_id)
            .is_some()
    }

    /// Starts a session; `(pending, value_or_token)`, the value a `NativeSession`.
    fn session(&self, py: Python<'_>, id: String) -> PyResult<(bool, Py<PyAny>)> {
        let bus = self.bus.clone();
        let inbox = self.inbox.clone();
        let s = ops::start(&self.inbox, async move {
            let result = bus.session(id).await;
            Done::Session(result, bus, inbox)
        });
        started(py, s)
    }

    /// Stops intake (at once, on the calling thread), drains until `timeout` seconds, and
    /// reports; `(pending, value_or_token)`, the value `(drained, left, nacked)`.
    fn shutdown(&self, py: Python<'_>, timeout: f64) -> PyResult<(bool, Py<PyAny>)> {
        let deadline = seconds(timeout, "timeout")?;
        let bus = self.bus.clone();
        let s = ops::start(&self.inbox, async move {
            Done::Shutdown(bus.shutdown(deadline).await)
        });
        started(py, s)
    }

    /// Waits until every accepted message is settled; returns a token.
    fn idle(&self) -> u64 {
        let bus = self.bus.clone();
        ops::spawn(&self.inbox, async move {
            bus.run_until_idle().await;
            Done::Idle
        })
    }

    /// Forgets the operation of `token` (its await was cancelled): its result is discarded.
    /// False when it had finished.
    fn cancel(&self, token: u64) -> bool {
        self.inbox.cancel(token)
    }

    /// Operations Python awaits that have not finished (cancelled ones are not counted).
    fn calls_in_flight(&self) -> usize {
        self.inbox.calls_in_flight()
    }

    /// Items waiting for the loop.
    fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Messages accepted and not yet settled.
    fn pending(&self) -> usize {
        self.bus.pending()
    }

    /// True once shutdown started.
    fn is_shutting_down(&self) -> bool {
        self.bus.is_shutting_down()
    }

    /// The registry (every subscription with its counters) as JSON.
    fn registry_json(&self, py: Python<'_>) -> PyResult<String> {
        serde_json::to_string(&self.bus.registry())
            .map_err(|e| errors::raise(py, "SwitchyardError", e.to_string(), &[]))
    }

    /// The bus's figures (`Bus::metrics_snapshot`) as JSON.
    fn metrics_json(&self, py: Python<'_>) -> PyResult<String> {
        serde_json::to_string(&self.bus.metrics_snapshot())
            .map_err(|e| errors::raise(py, "SwitchyardError", e.to_string(), &[]))
    }

    /// The default in-memory dead-letter store, oldest first; empty when the bus was
    /// built with another sink (which then holds the letters).
    fn dead_letters(&self) -> Vec<PyDeadLetter> {
        self.bus
            .dead_letters()
            .map(|store| store.list().into_iter().map(PyDeadLetter::new).collect())
            .unwrap_or_default()
    }

    /// Dead-letters a payload a Python batch handler could not decode (reason
    /// `decode_failed`, raw bytes kept) under a fresh envelope on `topic`.
    fn dead_letter_raw(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &[u8],
        handler: &str,
        error: String,
    ) -> PyResult<()> {
        let topic = Topic::new(topic).map_err(|e| errors::publish_error(py, e.into()))?;
        let env = Envelope::new(topic, bytes::Bytes::copy_from_slice(payload));
        self.bus.dead_letter(
            DeadLetter::new(env, DeadLetterReason::DecodeFailed, error).with_handler(handler),
        );
        Ok(())
    }

    /// What the transport can promise (`None` in memory), as `{name: bool}`.
    fn transport_name(&self) -> Option<String> {
        self.bus.transport_capabilities().map(|c| format!("{c:?}"))
    }
}

impl NativeBus {
    /// The bus, for the test helpers.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The inbox, for the test helpers.
    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }
}

/// Hands a batch to the loop and waits for its answer.
async fn batch_call(
    inbox: Arc<Inbox>,
    sub: u64,
    msgs: Vec<RawPayload>,
    ctx: Ctx,
) -> Result<Outcome, BoxError> {
    let (tx, rx) = oneshot::channel();
    let token = inbox.token();
    let mut guard = CancelOnDrop {
        inbox: inbox.clone(),
        token,
        armed: true,
    };
    inbox.push(Item::InvokeBatch {
        token,
        sub,
        env: Arc::new(ctx.envelope().clone()),
        payloads: msgs.into_iter().map(|m| m.0).collect(),
        reply: tx,
    });
    let answer = rx.await;
    guard.armed = false;
    answer.unwrap_or_else(|_| Err("the Python handler was dropped without answering".into()))
}

/// A session's command handler through the typed API: the answer's reply payload becomes
/// the typed output (JSON), a rejection a permanent failure.
async fn session_command(
    inbox: Arc<Inbox>,
    sub: u64,
    _cmd: RawPayload,
    ctx: Ctx,
) -> Result<serde_json::Value, BoxError> {
    let (tx, rx) = oneshot::channel();
    let token = inbox.token();
    let mut guard = CancelOnDrop {
        inbox: inbox.clone(),
        token,
        armed: true,
    };
    let active = inbox.push(Item::Invoke {
        token,
        sub,
        env: Arc::new(ctx.envelope().clone()),
        reply: tx,
        command: true,
    });
    let answer = answer(&inbox, active, rx).await;
    guard.armed = false;
    match answer {
        Ok(Ok(Outcome::Reply(reply))) => Ok(serde_json::from_slice(&reply.payload)?),
        Ok(Ok(Outcome::Ack)) => Ok(serde_json::Value::Null),
        Ok(Ok(Outcome::Reject { reason })) => {
            Err(Box::new(Permanent::new(format!("rejected: {reason}"))))
        }
        Ok(Ok(Outcome::Retry { .. })) => Err("handler asked for a retry".into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the Python handler was dropped without answering".into()),
    }
}

/// A session: its handlers see only its messages and go away when it ends.
#[pyclass(name = "NativeSession", module = "switchyard._switchyard", frozen)]
pub struct PySession {
    session: Mutex<Option<switchyard::Session>>,
    id: String,
    inbox: Arc<Inbox>,
    _bus: Bus,
}

impl PySession {
    pub(crate) fn new(session: switchyard::Session, bus: Bus, inbox: Arc<Inbox>) -> Self {
        Self {
            id: session.id().to_owned(),
            session: Mutex::new(Some(session)),
            inbox,
            _bus: bus,
        }
    }
}

#[pymethods]
impl PySession {
    /// The session id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Ends the session: removes its handlers and publishes `switchyard.session.ended`.
    /// Returns a token, or `None` when it had already ended.
    fn end(&self) -> Option<u64> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(ops::spawn(&self.inbox, async move {
            Done::SessionEnded(session.end().await)
        }))
    }
}
