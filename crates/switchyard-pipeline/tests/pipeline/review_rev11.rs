//! Review rev11: the users' async typed pipeline (the seed's `BaseDomain[TIn, TOut]` chain
//! bytes → record → processed → metrics → export, with its monitor) built with the public
//! API: errors counted by type per stage and dead-lettered with the raw bytes, backpressure
//! from a slow stage, fan-out merged again and several sources fanned in, shutdown with a
//! stuck stage, and the same pipeline across a bus hop in memory and on the embedded log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{
    BusHandoff, IterSource, Pipeline, Runner, Stage, StageError, map_fn, stage_fn,
};
use tokio::sync::Semaphore;

use crate::{WAIT, collector};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metric {
    sensor: String,
    scaled: i64,
}

fn parse_stage() -> impl Stage<Bytes, Reading> {
    map_fn("parse", |b: Bytes| {
        serde_json::from_slice::<Reading>(&b).map_err(StageError::decode)
    })
}

fn process_stage() -> impl Stage<Reading, Metric> {
    map_fn("process", |r: Reading| {
        if r.value < 0.0 {
            return Err(StageError::invalid("negative reading"));
        }
        Ok(Metric {
            sensor: r.sensor,
            scaled: (r.value * 10.0) as i64,
        })
    })
}

fn raw(i: u32) -> Bytes {
    match i % 10 {
        3 => Bytes::from_static(b"{not json"),
        7 => Bytes::from(format!(r#"{{"sensor":"s{i}","value":-1.0}}"#)),
        _ => Bytes::from(format!(r#"{{"sensor":"s{i}","value":{i}.5}}"#)),
    }
}

fn origin(b: &Bytes) -> Envelope {
    Envelope::new(Topic::new("zmq.ingress").unwrap(), b.clone())
}

/// The seed's chain with its monitor: every stage's successes and errors are counted, errors
/// by type (`serde_json::Error`-like decode errors at parse, `invalid` at process); failed
/// runs are dead-lettered once with the raw bytes they came from and the right reason; the
/// counters add up (no "not_completed_pipelines" left uninitialised).
#[tokio::test]
async fn the_seeds_chain_counts_per_stage_and_dead_letters_with_the_raw_bytes() {
    let (out, export) = collector::<Metric>();
    let p: Pipeline<Bytes, ()> = Pipeline::new(parse_stage())
        .then(process_stage())
        .then(export);
    assert_eq!(p.describe(), "parse → process → collect");
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(p)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..20 {
        let b = raw(i);
        feed.send_with_origin(b.clone(), origin(&b)).await.unwrap();
    }
    assert!(
        running
            .monitor()
            .wait_until(WAIT, |m| m.settled() == 20)
            .await
    );
    let report = running.shutdown().await;
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (20, 16, 4, 0),
        "{m:?}"
    );
    let parse = m.op("parse", "run").unwrap();
    assert_eq!((parse.success, parse.errors), (18, 2), "{parse:?}");
    assert_eq!(parse.error_types.values().sum::<u64>(), 2, "{parse:?}");
    let process = m.op("process", "run").unwrap();
    assert_eq!((process.success, process.errors), (16, 2), "{process:?}");
    assert_eq!(m.op("collect", "run").unwrap().success, 16);
    assert_eq!(out.lock().unwrap().len(), 16);

    let letters = dlq.list();
    assert_eq!(letters.len(), 4, "{letters:?}");
    let decode: Vec<_> = letters
        .iter()
        .filter(|l| l.reason == DeadLetterReason::DecodeFailed)
        .collect();
    assert_eq!(decode.len(), 2);
    for l in &decode {
        assert_eq!(&l.envelope.payload[..], b"{not json");
        assert_eq!(l.handler.as_deref(), Some("parse"));
    }
    let invalid: Vec<_> = letters
        .iter()
        .filter(|l| l.reason == DeadLetterReason::HandlerFailed)
        .collect();
    assert_eq!(invalid.len(), 2);
    for l in &invalid {
        assert!(l.envelope.payload.starts_with(b"{\"sensor\""), "{l:?}");
        assert!(l.error.contains("negative reading"), "{}", l.error);
    }
}

/// A slow stage holds `max_in_flight` runs; the next `Feed::send` waits (the backpressure a
/// source sees) until the stage lets one finish, and nothing is lost.
#[tokio::test(start_paused = true)]
async fn a_slow_stage_backpressures_the_feed() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let (out, collect) = collector::<u32>();
    let p = Pipeline::new(stage_fn("slow", move |x: u32| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok(x)
        }
    }))
    .then(collect);
    let running = Runner::new(p).max_in_flight(3).start().await.unwrap();
    let feed = running.feed();
    for i in 0..3 {
        feed.send(i).await.unwrap();
    }
    let waited = tokio::time::timeout(Duration::from_secs(60), feed.send(3)).await;
    assert!(
        waited.is_err(),
        "a fourth run was accepted past max_in_flight"
    );
    assert_eq!(running.monitor().accepted(), 3);
    gate.add_permits(1);
    tokio::time::timeout(WAIT, feed.send(3))
        .await
        .expect("the feed stays blocked after a run finished")
        .unwrap();
    gate.add_permits(10);
    assert!(
        running
            .monitor()
            .wait_until(WAIT, |m| m.completed() == 4)
            .await
    );
    let report = running.shutdown().await;
    assert_eq!(report.monitor.accepted, 4);
    let mut got = out.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);
}

/// Fan-out then a merge, fed by two sources at once: every input reaches both branches, both
/// outputs reach the merged stage exactly once, and each input is one completed run.
#[tokio::test]
async fn two_sources_fan_in_and_a_fan_out_merges_back() {
    let (out, collect) = collector::<u32>();
    let p: Pipeline<u32, ()> = Pipeline::new(map_fn("id", |x: u32| Ok(x)))
        .fan_out(vec![
            Pipeline::new(map_fn("even", |x: u32| Ok(x * 2))),
            Pipeline::new(map_fn("odd", |x: u32| Ok(x * 2 + 1))),
        ])
        .then(collect);
    let mut running = Runner::new(p).start().await.unwrap();
    running.spawn_source(IterSource::new(0..50u32));
    running.spawn_source(IterSource::new(1000..1050u32));
    let report = tokio::time::timeout(WAIT, running.run_until(std::future::pending::<()>()))
        .await
        .expect("the run does not end when every source ended");
    let m = &report.monitor;
    assert_eq!((m.accepted, m.completed, m.failed), (100, 100, 0), "{m:?}");
    let mut got = out.lock().unwrap().clone();
    got.sort_unstable();
    let mut want: Vec<u32> = (0..50u32)
        .chain(1000..1050)
        .flat_map(|x| [x * 2, x * 2 + 1])
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

struct Finishing(Arc<AtomicUsize>);
impl Stage<u32, ()> for Finishing {
    async fn run(&mut self, _x: u32) -> Result<(), StageError> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), StageError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Shutdown while a stage is stuck: the drain ends at its deadline, every run still in flight
/// is dead-lettered once with reason `Shutdown`, the counters add up, the feed gives values
/// back afterwards, and the last stage's `finish` still runs.
#[tokio::test(start_paused = true)]
async fn shutdown_with_a_stuck_stage_fails_in_flight_runs_once() {
    let gate = Arc::new(Semaphore::new(2));
    let g = gate.clone();
    let finished = Arc::new(AtomicUsize::new(0));
    let p = Pipeline::new(stage_fn("stuck", move |x: u32| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok(x)
        }
    }))
    .then(Finishing(finished.clone()));
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(p)
        .max_in_flight(5)
        .drain_timeout(Duration::from_secs(2))
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..5 {
        feed.send(i).await.unwrap();
    }
    assert!(
        running
            .monitor()
            .wait_until(WAIT, |m| m.completed() == 2)
            .await
    );
    let report = tokio::time::timeout(Duration::from_secs(30), running.shutdown())
        .await
        .expect("shutdown hangs on a stuck stage");
    let m = &report.monitor;
    assert!(!report.drained);
    assert_eq!((m.accepted, m.completed, m.failed), (5, 2, 3), "{m:?}");
    let letters = dlq.list();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
    let back = feed.send(99).await.unwrap_err();
    assert_eq!(back.value, 99);
    assert_eq!(finished.load(Ordering::SeqCst), 1, "finish did not run");
}

/// Runs the chain across a bus hop (`via_bus(BusHandoff)`) and returns what a user checks.
async fn over_the_bus(bus: switchyard::Bus) -> (Vec<String>, u64, u64, usize) {
    let (out, export) = collector::<Metric>();
    let p: Pipeline<Bytes, ()> = Pipeline::new(parse_stage())
        .via_bus(
            BusHandoff::new(bus.clone()),
            Topic::new("sensors.parsed").unwrap(),
        )
        .then(process_stage())
        .then(export);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(p)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..20 {
        feed.send(raw(i)).await.unwrap();
    }
    assert!(
        running
            .monitor()
            .wait_until(WAIT, |m| m.settled() == 20)
            .await,
        "runs across the hop never settle"
    );
    let report = running.shutdown().await;
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let mut got: Vec<String> = out
        .lock()
        .unwrap()
        .iter()
        .map(|m| format!("{}={}", m.sensor, m.scaled))
        .collect();
    got.sort();
    (
        got,
        report.monitor.completed,
        report.monitor.failed,
        dlq.len(),
    )
}

/// The "same API" promise for pipelines: the chain split by a bus hop gives the same
/// outcomes on the in-memory bus and on the embedded log.
#[tokio::test]
async fn a_pipeline_across_a_bus_hop_gives_the_same_outcomes_on_the_log() {
    let in_memory = over_the_bus(switchyard::Bus::new()).await;
    assert_eq!((in_memory.1, in_memory.2, in_memory.3), (16, 4, 4));
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = switchyard::Bus::builder().transport(log).build().unwrap();
    let on_log = tokio::time::timeout(Duration::from_secs(20), over_the_bus(bus))
        .await
        .expect("the pipeline hangs on the log");
    assert_eq!(in_memory, on_log);
}

/// Shutdown mid-pipeline with runs behind a bus hop on the embedded log and a stuck stage
/// after it: the runner's shutdown does not hang on the durable hop, and every accepted run
/// is settled exactly once (completed, or dead-lettered with reason `Shutdown`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_pipeline_across_a_hop_on_the_log_settles_each_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = switchyard::Bus::builder().transport(log).build().unwrap();
    let gate = Arc::new(Semaphore::new(2));
    let g = gate.clone();
    let (out, collect) = collector::<u32>();
    let p = Pipeline::new(map_fn("before", |x: u32| Ok(x)))
        .via_bus(
            BusHandoff::new(bus.clone()),
            Topic::new("rev11.hop").unwrap(),
        )
        .then(stage_fn("stuck", move |x: u32| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Ok(x)
            }
        }))
        .then(collect);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(p)
        .dead_letters(dlq.clone())
        .drain_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..6u32 {
        feed.send(i).await.unwrap();
    }
    assert!(
        running
            .monitor()
            .wait_until(WAIT, |m| m.completed() == 2)
            .await
    );
    let report = tokio::time::timeout(WAIT, running.shutdown())
        .await
        .expect("the runner's shutdown hangs on the log hop");
    let m = &report.monitor;
    assert_eq!((m.accepted, m.completed, m.failed), (6, 2, 4), "{m:?}");
    let letters = dlq.list();
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
    assert_eq!(out.lock().unwrap().len(), 2);
    gate.add_permits(100);
    tokio::time::timeout(WAIT, bus.shutdown(Duration::from_secs(2)))
        .await
        .expect("the bus shutdown hangs")
        .unwrap();
}
