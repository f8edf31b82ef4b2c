//! Rust components to put beside Python ones on the same bus: used by the tests (a Rust
//! publisher that must keep flowing while a Python handler holds the loop) and by the mixed
//! examples. Exposed as `switchyard._switchyard.testing`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use switchyard::{Envelope, Kind, Outcome, Subscription, Topic, handler_fn};
use tokio::sync::Notify;

use crate::bus::NativeBus;
use crate::errors;
use crate::inbox::Inbox;
use crate::ops::{self, Done};

/// A Rust subscription (or command handler) that counts what it handled.
#[pyclass(name = "RustCounter", module = "switchyard._switchyard", frozen)]
pub struct RustCounter {
    count: Arc<AtomicU64>,
    notify: Arc<Notify>,
    inbox: Arc<Inbox>,
    sub: Mutex<Option<Subscription>>,
}

#[pymethods]
impl RustCounter {
    /// Messages handled so far.
    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// A token resolving to the count once it reaches `n`, or raising after `timeout` seconds.
    fn wait(&self, n: u64, timeout: f64) -> PyResult<u64> {
        let timeout = Duration::try_from_secs_f64(timeout)
            .map_err(|_| pyo3::exceptions::PyValueError::new_err("bad timeout"))?;
        let (count, notify) = (self.count.clone(), self.notify.clone());
        Ok(ops::spawn(&self.inbox, async move {
            let deadline = switchyard::deadline_after(timeout);
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let seen = count.load(Ordering::Acquire);
                if seen >= n {
                    return Done::Count(Ok(seen));
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    let seen = count.load(Ordering::Acquire);
                    return Done::Count(Err(format!(
                        "the Rust subscriber counted {seen} of {n} messages within {timeout:?}"
                    )));
                }
            }
        }))
    }

    /// Unsubscribes.
    fn close(&self) {
        self.sub.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn register(
    py: Python<'_>,
    bus: &NativeBus,
    builder: switchyard::SubscriptionBuilder,
    count: Arc<AtomicU64>,
    notify: Arc<Notify>,
) -> PyResult<RustCounter> {
    let sub = py
        .detach(|| ops::runtime().block_on(builder.start()))
        .map_err(|e| errors::subscribe_error(py, e))?;
    Ok(RustCounter {
        count,
        notify,
        inbox: bus.inbox().clone(),
        sub: Mutex::new(Some(sub)),
    })
}

/// Subscribes a Rust handler to `pattern` that only counts.
#[pyfunction]
pub fn rust_counter(
    py: Python<'_>,
    bus: &Bound<'_, NativeBus>,
    name: &str,
    pattern: &str,
) -> PyResult<RustCounter> {
    let (count, notify) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
    let (c, n) = (count.clone(), notify.clone());
    let handler = handler_fn(move |_env: Envelope| {
        c.fetch_add(1, Ordering::AcqRel);
        n.notify_waiters();
        async { Ok::<_, std::convert::Infallible>(()) }
    });
    let bus = bus.get();
    let builder = bus.bus().subscribe(name, pattern, handler);
    register(py, bus, builder, count, notify)
}

/// Registers a Rust command handler for `topic` that replies `{"by": "rust", "echo": <the
/// command's JSON>}`, publishing `<topic>.done` (caused by the command) first.
#[pyfunction]
pub fn rust_echo_handler(
    py: Python<'_>,
    bus: &Bound<'_, NativeBus>,
    topic: &str,
) -> PyResult<RustCounter> {
    let (count, notify) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
    let (c, n) = (count.clone(), notify.clone());
    let rust_bus = bus.get().bus().clone();
    let done_topic = format!("{topic}.done");
    let handler = handler_fn(move |env: Envelope| {
        let (c, n, rust_bus, done_topic) =
            (c.clone(), n.clone(), rust_bus.clone(), done_topic.clone());
        async move {
            let echo: serde_json::Value = serde_json::from_slice(&env.payload)?;
            let reply = serde_json::json!({ "by": "rust", "echo": echo });
            let done = Envelope::new(Topic::new(&done_topic)?, serde_json::to_vec(&reply)?)
                .caused_by(&env);
            rust_bus.publish_envelope(done).await?;
            c.fetch_add(1, Ordering::AcqRel);
            n.notify_waiters();
            Ok::<_, switchyard::BoxError>(Outcome::reply(env.reply(serde_json::to_vec(&reply)?)))
        }
    });
    let native = bus.get();
    let builder = native.bus().handle_envelope("rust-echo", topic, handler);
    register(py, native, builder, count, notify)
}

/// Publishes `n` events with `payload` on `topic` from a tokio task (a Rust publisher).
/// Returns a token resolving to the number published.
#[pyfunction]
pub fn rust_publish(bus: &Bound<'_, NativeBus>, topic: String, n: u64, payload: Vec<u8>) -> u64 {
    let native = bus.get();
    let rust_bus = native.bus().clone();
    let payload = bytes::Bytes::from(payload);
    ops::spawn(native.inbox(), async move {
        let topic = match Topic::new(&topic) {
            Ok(t) => t,
            Err(e) => return Done::Count(Err(e.to_string())),
        };
        for i in 0..n {
            if let Err(e) = rust_bus
                .publish_envelope(Envelope::new(topic.clone(), payload.clone()))
                .await
            {
                return Done::Count(Err(format!("publish {i} failed: {e}")));
            }
        }
        Done::Count(Ok(n))
    })
}

/// Sends a command from Rust (to whatever handler has `topic`, a Python one included).
/// Returns a token resolving to the reply payload.
#[pyfunction]
pub fn rust_send(bus: &Bound<'_, NativeBus>, topic: String, payload: Vec<u8>) -> u64 {
    let native = bus.get();
    let rust_bus = native.bus().clone();
    ops::spawn(native.inbox(), async move {
        let env = match Topic::new(&topic) {
            Ok(t) => Envelope::new(t, payload).with_kind(Kind::Command),
            Err(e) => return Done::Sent(Err(e.into())),
        };
        Done::Sent(rust_bus.send_envelope(env).await)
    })
}

/// A new message id, as the bus makes one for every message (to check ids across processes).
#[pyfunction]
pub fn new_message_id() -> String {
    switchyard::MessageId::new().to_string()
}
