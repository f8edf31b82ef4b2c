//! What Python passes as settings, turned into the bus's: overflow policies, durations in
//! seconds, and a subscription's options.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use smol_str::SmolStr;
use switchyard::{Overflow, SubscriptionBuilder};

use crate::envelope::PyEnvelope;

/// The overflow policy Python names, with its timeouts in seconds.
pub(crate) fn overflow(kind: &str, timeout: f64, max_delay: f64) -> PyResult<Overflow> {
    let secs = seconds;
    Ok(match kind {
        "block" => Overflow::Block {
            timeout: secs(timeout, "overflow timeout")?,
        },
        "drop_oldest" => Overflow::DropOldest,
        "reject_new" => Overflow::RejectNew,
        "adaptive" => Overflow::Adaptive {
            max_delay: secs(max_delay, "overflow max_delay")?,
            timeout: secs(timeout, "overflow timeout")?,
        },
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown overflow policy {other:?} (block, drop_oldest, reject_new, adaptive)"
            )));
        }
    })
}

/// A subscription's overflow policy: `None` (the bus's) when it sets none of the three;
/// otherwise the bus's policy (`bus`: kind, timeout, max_delay as Python named them) with what
/// it sets replaced: `on(overflow_timeout=0.05)` alone is the bus's policy with that timeout.
/// A negative or non-finite timeout is a ValueError whatever the policy.
pub(crate) fn sub_overflow(
    bus: &(String, f64, f64),
    kind: Option<&str>,
    timeout: Option<f64>,
    max_delay: Option<f64>,
) -> PyResult<Option<Overflow>> {
    if kind.is_none() && timeout.is_none() && max_delay.is_none() {
        return Ok(None);
    }
    if let Some(t) = timeout {
        seconds(t, "overflow_timeout")?;
    }
    if let Some(d) = max_delay {
        seconds(d, "overflow_max_delay")?;
    }
    let (bus_kind, bus_timeout, bus_max_delay) = bus;
    overflow(
        kind.unwrap_or(bus_kind),
        timeout.unwrap_or(*bus_timeout),
        max_delay.unwrap_or(*bus_max_delay),
    )
    .map(Some)
}

/// `s` seconds as a duration; a negative or non-finite value names `what`.
pub(crate) fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds"
        ))
    })
}

/// Settings of one subscription, as Python passes them.
#[derive(Default)]
pub(super) struct SubOptions {
    pub(super) workers: Option<usize>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) overflow: Option<Overflow>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_delay: Option<Duration>,
    pub(super) priority: Option<i32>,
    pub(super) ordering_header: Option<String>,
    pub(super) header_filters: Vec<(String, String)>,
    pub(super) filter: Option<Py<PyAny>>,
}

impl SubOptions {
    pub(super) fn apply(self, mut b: SubscriptionBuilder) -> SubscriptionBuilder {
        if let Some(n) = self.workers {
            b = b.workers(n);
        }
        if let Some(n) = self.queue_capacity {
            b = b.queue_capacity(n);
        }
        if let Some(o) = self.overflow {
            b = b.overflow(o);
        }
        if let Some(n) = self.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(d) = self.retry_delay {
            b = b.retry_delay(d);
        }
        if let Some(p) = self.priority {
            b = b.handler_priority(p);
        }
        if let Some(h) = self.ordering_header {
            b = b.ordering_key(move |env| env.header(&h).map(SmolStr::new));
        }
        for (name, value) in self.header_filters {
            b = b.filter(move |env| env.header(&name) == Some(value.as_str()));
        }
        if let Some(f) = self.filter {
            // Runs under the GIL on the publishing thread; header filters do not need it.
            b = b.filter(move |env| {
                let kept = Python::attach(|py| {
                    let view = PyEnvelope::new(Arc::new(env.clone()));
                    f.call1(py, (view,))
                        .and_then(|r| r.is_truthy(py))
                        .map_err(|e| {
                            // The traceback, on stderr as for an exception nobody caught.
                            e.print(py);
                            e.to_string()
                        })
                });
                match kept {
                    Ok(keep) => keep,
                    // A filter that raised did not decide: not "filtered". The bus captures
                    // the unwind as it does a Rust filter's panic (`Admission::Panicked`): the
                    // copy is dead-lettered for this subscription (reason `panicked`,
                    // "filter panicked: Python filter raised ValueError: ...") and counted in
                    // `panicked`. `resume_unwind` skips the panic hook: the traceback above
                    // and the bus's error log say it, not a "thread panicked" line. Outside
                    // `Python::attach`, so no Python state is held while it unwinds.
                    Err(text) => {
                        std::panic::resume_unwind(Box::new(format!("Python filter raised {text}")))
                    }
                }
            });
        }
        b
    }
}
