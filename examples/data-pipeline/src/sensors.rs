//! The sensor pipeline: ZeroMQ PULL source → parse (bytes → [`Reading`]) → process
//! (→ [`Measurement`]) → metrics (→ [`Enriched`]) → export (JSON lines file).
//!
//! It is the seed's hand-written analytics flow with its types lined up. The CLI runs it as
//! `switchyard demo zmq` through [`run_zmq_demo`]; tests and benchmarks use [`ZmqDemo`] to reach the
//! monitor and the dead letters while it runs. The stage logic is plain functions ([`parse`],
//! [`process`], [`SensorStats::update`], [`export_line`]) so a benchmark can call them in a loop.
//!
//! Wire format (one JSON object per ZeroMQ message):
//! `{"id": 7, "sensor": "boiler-1", "value": 21.5, "unit": "c"}` (`unit`: `c` (default), `f` or `k`).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_core::InMemoryDeadLetters;
use tokio::io::AsyncWriteExt;

use switchyard_pipeline::zmq::{ZmqSocketKind, ZmqSourceBuilder};
use switchyard_pipeline::{
    Monitor, Pipeline, RunReport, Runner, RunningPipeline, SocketError, Stage, StageError,
    StartError, map_fn,
};

/// One reading as it arrives on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Unique id given by the publisher.
    pub id: u64,
    /// Sensor name.
    pub sensor: String,
    /// Measured temperature.
    pub value: f64,
    /// `c` (default), `f` or `k`.
    #[serde(default)]
    pub unit: Option<String>,
}

/// A validated reading in degrees Celsius.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The reading's id.
    pub id: u64,
    /// Sensor name, trimmed and lower-cased.
    pub sensor: String,
    /// Temperature in °C.
    pub celsius: f64,
}

/// A measurement with running statistics of its sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enriched {
    /// The reading's id.
    pub id: u64,
    /// Sensor name.
    pub sensor: String,
    /// Temperature in °C.
    pub celsius: f64,
    /// Readings of this sensor so far, this one included.
    pub sensor_count: u64,
    /// Mean of this sensor's readings so far, in °C.
    pub sensor_mean: f64,
}

/// Parses one payload. Fails with a `Decode` error on bad JSON or missing fields, and an
/// `Invalid` error on an empty sensor name or a non-finite value.
pub fn parse(payload: &[u8]) -> Result<Reading, StageError> {
    let r: Reading = serde_json::from_slice(payload).map_err(StageError::decode)?;
    if r.sensor.trim().is_empty() {
        return Err(StageError::invalid("empty sensor name"));
    }
    if !r.value.is_finite() {
        return Err(StageError::invalid("value is not a finite number"));
    }
    Ok(r)
}

/// Normalises the sensor name and converts the value to °C. Fails on an unknown unit.
pub fn process(r: Reading) -> Result<Measurement, StageError> {
    let celsius = match r.unit.as_deref().unwrap_or("c") {
        "c" | "C" => r.value,
        "f" | "F" => (r.value - 32.0) * 5.0 / 9.0,
        "k" | "K" => r.value - 273.15,
        other => return Err(StageError::invalid(format!("unknown unit {other:?}"))),
    };
    Ok(Measurement {
        id: r.id,
        sensor: r.sensor.trim().to_lowercase(),
        celsius,
    })
}

/// Running count and mean per sensor (the metrics stage's state).
#[derive(Debug, Default, Clone)]
pub struct SensorStats {
    per_sensor: HashMap<String, (u64, f64)>,
}

impl SensorStats {
    /// Adds one measurement and returns it enriched with its sensor's statistics.
    pub fn update(&mut self, m: Measurement) -> Enriched {
        let entry = self.per_sensor.entry(m.sensor.clone()).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += m.celsius;
        Enriched {
            id: m.id,
            sensor: m.sensor,
            celsius: m.celsius,
            sensor_count: entry.0,
            sensor_mean: entry.1 / entry.0 as f64,
        }
    }
}

/// Appends one value as a JSON line to `buf`.
pub fn export_line<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), StageError> {
    serde_json::to_writer(&mut *buf, value).map_err(StageError::other)?;
    buf.push(b'\n');
    Ok(())
}

/// A stage writing each input as one JSON line to a file. The file is created (truncated) in
/// `init` and flushed in `finish`, so after a graceful shutdown it holds every exported value.
pub struct JsonLinesExporter<T> {
    path: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    line: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for JsonLinesExporter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesExporter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T> JsonLinesExporter<T> {
    /// Exports to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: None,
            line: Vec::with_capacity(256),
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + Send + Sync + 'static> Stage<T, ()> for JsonLinesExporter<T> {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "export".into()
    }

    async fn init(&mut self) -> Result<(), StageError> {
        let file = tokio::fs::File::create(&self.path)
            .await
            .map_err(StageError::io)?;
        self.file = Some(tokio::io::BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    async fn run(&mut self, input: T) -> Result<(), StageError> {
        self.line.clear();
        export_line(&input, &mut self.line)?;
        let Some(file) = self.file.as_mut() else {
            return Err(StageError::new(
                switchyard_pipeline::StageErrorKind::Unavailable,
                "exporter not initialised",
            ));
        };
        file.write_all(&self.line).await.map_err(StageError::io)
    }

    async fn finish(&mut self) -> Result<(), StageError> {
        if let Some(file) = self.file.as_mut() {
            file.flush().await.map_err(StageError::io)?;
            file.get_mut().sync_all().await.map_err(StageError::io)?;
        }
        Ok(())
    }
}

/// The demo's four stages: parse → process → metrics → export to `output`.
pub fn demo_pipeline(output: impl AsRef<Path>) -> Pipeline<Bytes, ()> {
    let mut stats = SensorStats::default();
    Pipeline::new(map_fn("parse", |b: Bytes| parse(&b)))
        .then(map_fn("process", process))
        .then(map_fn("metrics", move |m: Measurement| Ok(stats.update(m))))
        .then(JsonLinesExporter::<Enriched>::new(output.as_ref()))
}

/// Settings of the demo. Defaults: bind a PULL socket on `tcp://127.0.0.1:5555`, export to
/// `zmq-demo.jsonl`, 256 runs in flight, 100,000 dead letters kept, 30 s drain deadline.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Endpoint to bind or connect (port 0 binds any free port).
    pub endpoint: String,
    /// Bind (`true`) or connect (`false`).
    pub bind: bool,
    /// PULL (every message) or SUB (prefix-filtered, may drop).
    pub socket: ZmqSocketKind,
    /// The JSON-lines output file.
    pub output: PathBuf,
    /// Runs in flight at most.
    pub max_in_flight: usize,
    /// Dead letters kept in memory.
    pub dead_letter_capacity: usize,
    /// The largest reading taken (PULL only): a larger one is dead-lettered by reference,
    /// never held whole. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Drain deadline at shutdown.
    pub drain_timeout: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://127.0.0.1:5555".to_owned(),
            bind: true,
            socket: ZmqSocketKind::Pull,
            output: PathBuf::from("zmq-demo.jsonl"),
            max_in_flight: 256,
            dead_letter_capacity: 100_000,
            max_message_bytes: 1024 * 1024,
            drain_timeout: switchyard_pipeline::DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The demo failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The ZeroMQ socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The pipeline could not start (e.g. the output file cannot be created).
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A running demo pipeline.
#[derive(Debug)]
pub struct ZmqDemo {
    running: RunningPipeline<Bytes>,
    endpoint: String,
    dead_letters: Arc<InMemoryDeadLetters>,
    output: PathBuf,
    socket: ZmqSocketKind,
}

/// What the demo reports when it stops.
#[derive(Debug)]
pub struct DemoReport {
    /// The runner's report (monitor numbers included).
    pub run: RunReport,
    /// The dead letters (undecodable and failed messages, raw bytes included).
    pub dead_letters: Arc<InMemoryDeadLetters>,
    /// The JSON-lines file written.
    pub output: PathBuf,
}

impl ZmqDemo {
    /// Opens the socket, starts the pipeline and its source.
    pub async fn start(config: DemoConfig) -> Result<Self, DemoError> {
        let builder = ZmqSourceBuilder::new(config.socket.clone())
            .name("zmq-source")
            .max_message_bytes(config.max_message_bytes);
        let source = if config.bind {
            builder.bind(&config.endpoint).await?
        } else {
            builder.connect(&config.endpoint).await?
        };
        let endpoint = source.endpoint().to_owned();
        let dead_letters = Arc::new(InMemoryDeadLetters::new(config.dead_letter_capacity));
        let mut running = Runner::new(demo_pipeline(&config.output))
            .max_in_flight(config.max_in_flight)
            .dead_letters(dead_letters.clone())
            .drain_timeout(config.drain_timeout)
            .start()
            .await?;
        running.spawn_source(source);
        Ok(Self {
            running,
            endpoint,
            dead_letters,
            output: config.output,
            socket: config.socket,
        })
    }

    /// The endpoint bound or connected (port resolved).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The live monitor.
    pub fn monitor(&self) -> &Monitor {
        self.running.monitor()
    }

    /// The dead-letter store.
    pub fn dead_letters(&self) -> &Arc<InMemoryDeadLetters> {
        &self.dead_letters
    }

    /// Runs until `shutdown` resolves, then stops the source, drains the stages and reports.
    pub async fn run_until<F: Future>(self, shutdown: F) -> DemoReport {
        let run = self.running.run_until(shutdown).await;
        DemoReport {
            run,
            dead_letters: self.dead_letters,
            output: self.output,
        }
    }
}

/// Runs the demo until `shutdown` resolves (pass [`shutdown_signal`](crate::shutdown_signal) for
/// SIGINT/SIGTERM), then prints the monitor summary to stdout and returns the report. This is what
/// `switchyard demo zmq` calls.
pub async fn run_zmq_demo<F: Future>(
    config: DemoConfig,
    shutdown: F,
) -> Result<DemoReport, DemoError> {
    let demo = ZmqDemo::start(config).await?;
    println!(
        "zmq demo: {} on {}, exporting to {}",
        match demo.socket {
            ZmqSocketKind::Pull => "PULL",
            ZmqSocketKind::Sub { .. } => "SUB",
        },
        demo.endpoint(),
        demo.output.display()
    );
    let report = demo.run_until(shutdown).await;
    println!(
        "zmq demo stopped ({:?}, drained: {}, in {:?}); dead letters: {}",
        report.run.reason,
        report.run.drained,
        report.run.shutdown_took,
        report.dead_letters.total()
    );
    print!("{}", report.run.monitor);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_valid_and_refuses_malformed() {
        let r = parse(br#"{"id":1,"sensor":"A","value":1.5}"#).unwrap();
        assert_eq!(r.id, 1);
        assert_eq!(
            parse(b"{not json").unwrap_err().kind,
            switchyard_pipeline::StageErrorKind::Decode
        );
        assert_eq!(
            parse(br#"{"id":1,"sensor":" ","value":1}"#)
                .unwrap_err()
                .kind,
            switchyard_pipeline::StageErrorKind::Invalid
        );
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn process_converts_units() {
        let m = process(Reading {
            id: 1,
            sensor: " Boiler ".into(),
            value: 212.0,
            unit: Some("f".into()),
        })
        .unwrap();
        assert_eq!(m.sensor, "boiler");
        assert!((m.celsius - 100.0).abs() < 1e-9);
        assert!(
            process(Reading {
                id: 2,
                sensor: "x".into(),
                value: 1.0,
                unit: Some("rankine".into())
            })
            .is_err()
        );
    }

    #[test]
    fn stats_track_mean_per_sensor() {
        let mut s = SensorStats::default();
        let m = |v| Measurement {
            id: 0,
            sensor: "a".into(),
            celsius: v,
        };
        s.update(m(1.0));
        let e = s.update(m(3.0));
        assert_eq!(e.sensor_count, 2);
        assert!((e.sensor_mean - 2.0).abs() < 1e-9);
    }
}
