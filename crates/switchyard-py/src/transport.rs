//! Transports a Python bus can run on: the embedded durable log and NATS JetStream.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use switchyard::{BusBuilder, Pattern};
use switchyard_log::{Durability, LogConfig, LogTransport, OpenError};
use switchyard_nats::{ConnectError, NatsConfig, NatsTransport};

use crate::errors;

enum Kind {
    Log(LogTransport),
    Nats(NatsTransport),
}

/// An opened transport, handed to exactly one bus.
#[pyclass(name = "NativeTransport", module = "switchyard._switchyard", frozen)]
pub struct NativeTransport {
    inner: Mutex<Option<Kind>>,
    name: &'static str,
}

fn patterns(py: Python<'_>, list: &[String]) -> PyResult<Vec<Pattern>> {
    list.iter()
        .map(|p| Pattern::new(p).map_err(|e| errors::raise(py, "InvalidTopic", e.to_string(), &[])))
        .collect()
}

impl NativeTransport {
    /// Gives the transport to a bus builder; a transport serves one bus.
    pub(crate) fn attach(&self, py: Python<'_>, builder: BusBuilder) -> PyResult<BusBuilder> {
        match self.inner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(Kind::Log(t)) => Ok(builder.transport(t)),
            Some(Kind::Nats(t)) => Ok(builder.transport(t)),
            None => Err(errors::raise(
                py,
                "InvalidConfig",
                "this transport already belongs to a bus".into(),
                &[],
            )),
        }
    }
}

#[pymethods]
impl NativeTransport {
    /// Opens (or creates) the embedded durable log in `path`. `streams` maps a stream name to
    /// its topic patterns (everything else goes to the `default` stream); `durability` is
    /// `always` (fsync per batch, the default), `interval` (sync at most `interval` seconds
    /// after a write) or `never` (on flush and close).
    #[staticmethod]
    #[pyo3(signature = (path, *, streams=Vec::new(), durability="always", interval=0.1))]
    fn open_log(
        py: Python<'_>,
        path: std::path::PathBuf,
        streams: Vec<(String, Vec<String>)>,
        durability: &str,
        interval: f64,
    ) -> PyResult<Self> {
        let durability = match durability {
            "always" => Durability::Always,
            "never" => Durability::Never,
            "interval" => {
                Durability::Interval(Duration::try_from_secs_f64(interval).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err(
                        "interval must be a non-negative number of seconds",
                    )
                })?)
            }
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "unknown durability {other:?} (always, interval, never)"
                )));
            }
        };
        let mut config = LogConfig::new(&path).with_durability(durability);
        for (name, pats) in streams {
            config = config.with_stream(name, patterns(py, &pats)?);
        }
        let log = py
            .detach(|| LogTransport::open(config))
            .map_err(|e| open_error(py, &e))?;
        Ok(Self {
            inner: Mutex::new(Some(Kind::Log(log))),
            name: "log",
        })
    }

    /// Connects to NATS JetStream at `url`, creating or updating `streams` (name → topic
    /// patterns). An awaitable resolving to the transport.
    #[staticmethod]
    #[pyo3(signature = (url, *, streams=Vec::new(), max_deliver=None, ack_wait=None, max_age=None))]
    fn connect_nats<'py>(
        py: Python<'py>,
        url: String,
        streams: Vec<(String, Vec<String>)>,
        max_deliver: Option<u32>,
        ack_wait: Option<f64>,
        max_age: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if crate::ops::forked() {
            // pyo3-async-runtimes' bridge below runs on the parent's runtime, whose threads
            // do not exist in a forked child: the connect would never complete.
            return Err(transport_error(
                py,
                "connect_nats is not available in a process forked from one that used \
                 switchyard (its runtime's threads do not survive the fork): start NATS \
                 workers with multiprocessing's \"spawn\" method"
                    .to_owned(),
                "unsupported",
            ));
        }
        let mut config = NatsConfig::new(url);
        for (name, pats) in streams {
            config = config.with_stream(name, patterns(py, &pats)?);
        }
        if let Some(n) = max_deliver {
            config = config.with_max_deliver(n);
        }
        if let Some(a) = max_age {
            config = config.with_max_age(Duration::try_from_secs_f64(a).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(
                    "max_age must be a non-negative number of seconds",
                )
            })?);
        }
        if let Some(w) = ack_wait {
            config = config.with_ack_wait(Duration::try_from_secs_f64(w).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(
                    "ack_wait must be a non-negative number of seconds",
                )
            })?);
        }
        // A one-off operation: pyo3-async-runtimes' bridge is fine here (it takes the GIL on
        // a tokio thread once, to resolve the future).
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            match NatsTransport::connect(config).await {
                Ok(t) => Ok(NativeTransport {
                    inner: Mutex::new(Some(Kind::Nats(t))),
                    name: "nats",
                }),
                Err(e) => Err(Python::attach(|py| connect_error(py, &e))),
            }
        })
    }

    /// `log` or `nats`.
    #[getter]
    fn name(&self) -> &'static str {
        self.name
    }
}

/// `TransportError` with the `kind` the docs list, for a log that did not open.
fn open_error(py: Python<'_>, e: &OpenError) -> PyErr {
    let kind = match e {
        OpenError::InvalidConfig(_) => "rejected",
        OpenError::Locked { .. } => "unavailable",
        OpenError::Corrupt(_) => "corrupt",
        _ => "io",
    };
    transport_error(py, e.to_string(), kind)
}

/// `TransportError` with its `kind`, for a NATS connection that was not made.
fn connect_error(py: Python<'_>, e: &ConnectError) -> PyErr {
    let kind = match e {
        ConnectError::Stream { .. } | ConnectError::InvalidConfig(_) => "rejected",
        _ => "unavailable",
    };
    transport_error(py, e.to_string(), kind)
}

fn transport_error(py: Python<'_>, message: String, kind: &'static str) -> PyErr {
    let kind = match kind.into_pyobject(py) {
        Ok(k) => k.into_any().unbind(),
        Err(_) => py.None(),
    };
    errors::raise(py, "TransportError", message, &[("kind", kind)])
}
