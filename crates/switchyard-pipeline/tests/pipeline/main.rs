//! Runner, fan-out/fan-in, bounded concurrency, failures, drain and bus hand-off, through the
//! public API only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{
    BusSink, BusSource, Handoff, InMemoryHandoff, IterSource, Monitor, Pipeline, Runner, Stage,
    StageError, StageErrorKind, StartError, StopReason, map_fn, stage_fn,
};
use tokio::sync::{Mutex, Semaphore};

mod drain_clock;
mod handoff_intake;
mod handoff_order;
mod review_rev11;
mod review_rev32;
mod review_rev44;
mod review_rev6;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn collector<T: Send + 'static>() -> (Arc<std::sync::Mutex<Vec<T>>>, impl Stage<T, ()>) {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = out.clone();
    (
        out,
        map_fn("collect", move |x: T| {
            o.lock().unwrap_or_else(|p| p.into_inner()).push(x);
            Ok(())
        }),
    )
}

#[tokio::test]
async fn linear_pipeline_counts_every_stage_and_run() {
    let (out, collect) = collector::<i64>();
    let pipeline = Pipeline::new(map_fn("parse", |s: String| {
        s.parse::<i64>().map_err(StageError::decode)
    }))
    .then(map_fn("square", |x: i64| Ok(x * x)))
    .then(collect);
    assert_eq!(pipeline.describe(), "parse → square → collect");
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let mut running = Runner::new(pipeline)
        .max_in_flight(4)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let inputs: Vec<String> = (0..100)
        .map(|i| {
            if i % 10 == 3 {
                format!("bad{i}")
            } else {
                i.to_string()
            }
        })
        .collect();
    running.spawn_source(IterSource::new(inputs));
    let report = running.run_until(std::future::pending::<()>()).await;
    assert_eq!(report.reason, StopReason::SourcesFinished);
    assert!(report.drained);
    let m = &report.monitor;
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (100, 90, 10, 0)
    );
    let parse = m.op("parse", "run").unwrap();
    assert_eq!((parse.success, parse.errors), (90, 10));
    assert_eq!(parse.error_types["ParseIntError"], 10);
    assert_eq!(m.op("square", "run").unwrap().success, 90);
    assert_eq!(m.op("collect", "run").unwrap().success, 90);
    assert!(m.op("square", "run").unwrap().p99_ns.is_some());
    let mut got = out.lock().unwrap().clone();
    got.sort();
    let want: Vec<i64> = (0..100).filter(|i| i % 10 != 3).map(|i| i * i).collect();
    assert_eq!(got, want);
    // Fed without origin: dead letters carry the stage and error, with an empty payload.
    assert_eq!(dlq.len(), 10);
    for l in dlq.list() {
        assert_eq!(l.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(l.handler.as_deref(), Some("parse"));
    }
}

#[tokio::test]
async fn failed_runs_dead_letter_their_origin_bytes() {
    let pipeline = Pipeline::new(map_fn("utf8", |b: bytes::Bytes| {
        String::from_utf8(b.to_vec()).map_err(StageError::decode)
    }))
    .then(map_fn("nonempty", |s: String| {
        if s.is_empty() {
            Err(StageError::invalid("empty"))
        } else {
            Ok(s)
        }
    }));
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    let topic = Topic::new("test.in").unwrap();
    for payload in [&b"ok"[..], &[0xff, 0x00][..], &b""[..]] {
        let origin = Envelope::new(topic.clone(), bytes::Bytes::copy_from_slice(payload));
        feed.send_with_origin(bytes::Bytes::copy_from_slice(payload), origin)
            .await
            .unwrap();
    }
    let report = running.shutdown().await;
    assert_eq!((report.monitor.completed, report.monitor.failed), (1, 2));
    let letters = dlq.list();
    let bad = letters
        .iter()
        .find(|l| l.envelope.payload.as_ref() == [0xff, 0x00])
        .unwrap();
    assert_eq!(bad.reason, DeadLetterReason::DecodeFailed);
    assert_eq!(bad.handler.as_deref(), Some("utf8"));
    let empty = letters
        .iter()
        .find(|l| l.envelope.payload.is_empty())
        .unwrap();
    assert_eq!(empty.reason, DeadLetterReason::HandlerFailed);
    assert_eq!(empty.handler.as_deref(), Some("nonempty"));
    assert!(empty.error.contains("empty"), "{}", empty.error);
    // Intake is closed after shutdown.
    assert!(feed.send(bytes::Bytes::from_static(b"late")).await.is_err());
}

#[tokio::test]
async fn in_flight_is_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let running_now = Arc::new(AtomicUsize::new(0));
    let g = gate.clone();
    let pipeline = Pipeline::new(stage_fn("gate", move |x: u32| {
        let g = g.clone();
        async move {
            g.acquire().await.map_err(StageError::other)?.forget();
            Ok(x)
        }
    }))
    .then(map_fn("after", |x: u32| Ok(x)));
    let monitor = Monitor::new();
    let running = Runner::new(pipeline)
        .max_in_flight(3)
        .monitor(monitor.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    let r = running_now.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..10 {
            feed.send(i).await.unwrap();
            r.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Three runs start; the fourth send waits for a slot.
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 3).await);
    tokio::task::yield_now().await;
    assert_eq!(monitor.accepted(), 3);
    assert_eq!(running_now.load(Ordering::SeqCst), 3);
    // Each released run frees exactly one slot.
    gate.add_permits(1);
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 4).await);
    assert_eq!(monitor.completed(), 1);
    gate.add_permits(9);
    feeder.await.unwrap();
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 10).await);
    let report = running.shutdown().await;
    assert_eq!(report.monitor.completed, 10);
}

#[tokio::test]
async fn fan_out_and_fan_in_count_each_run_once() {
    let (out, collect) = collector::<String>();
    let pipeline = Pipeline::new(map_fn("id", |x: u32| Ok(x)))
        .fan_out(vec![
            Pipeline::new(map_fn("hex", |x: u32| Ok(format!("h{x:x}")))),
            Pipeline::new(map_fn("dec", |x: u32| {
                if x == 7 {
                    Err(StageError::invalid("seven"))
                } else {
                    Ok(format!("d{x}"))
                }
            })),
            Pipeline::new(map_fn("neg", |x: u32| Ok(format!("n-{x}")))),
        ])
        .then(collect);
    assert_eq!(pipeline.describe(), "id → [hex | dec | neg] → collect");
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let mut running = Runner::new(pipeline)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    running.spawn_source(IterSource::new(0..20u32));
    let report = running.run_until(std::future::pending::<()>()).await;
    let m = &report.monitor;
    assert_eq!((m.accepted, m.completed, m.failed), (20, 19, 1));
    assert_eq!(m.op("hex", "run").unwrap().success, 20);
    assert_eq!(m.op("dec", "run").unwrap().errors, 1);
    // Fan-in: every branch output reached the one collect stage.
    assert_eq!(m.op("collect", "run").unwrap().success, 59);
    assert_eq!(out.lock().unwrap().len(), 59);
    assert!(out.lock().unwrap().contains(&"h7".to_owned()));
    assert_eq!(dlq.len(), 1, "a failed run is dead-lettered once");
}

#[tokio::test]
async fn panics_are_failures_not_dead_tasks() {
    let pipeline = Pipeline::new(map_fn("touchy", |x: u32| {
        if x == 2 {
            panic!("boom on two");
        }
        Ok(x)
    }));
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let mut running = Runner::new(pipeline)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    running.spawn_source(IterSource::new(0..5u32));
    let report = running.run_until(std::future::pending::<()>()).await;
    assert_eq!((report.monitor.completed, report.monitor.failed), (4, 1));
    let l = &dlq.list()[0];
    assert_eq!(l.reason, DeadLetterReason::Panicked);
    assert!(l.error.contains("boom on two"), "{}", l.error);
    assert_eq!(
        report.monitor.op("touchy", "run").unwrap().error_types["panicked"],
        1
    );
}

struct FailingInit;
impl Stage<u32, u32> for FailingInit {
    async fn init(&mut self) -> Result<(), StageError> {
        Err(StageError::new(StageErrorKind::Unavailable, "no database"))
    }
    async fn run(&mut self, x: u32) -> Result<u32, StageError> {
        Ok(x)
    }
}

#[tokio::test]
async fn init_failure_stops_start() {
    let finished = Arc::new(AtomicBool::new(false));
    let pipeline = Pipeline::new(map_fn("first", |x: u32| Ok(x))).then(FailingInit);
    let err = Runner::new(pipeline).start().await.unwrap_err();
    match err {
        StartError::Init { stage, source } => {
            assert_eq!(stage, "FailingInit");
            assert_eq!(source.kind, StageErrorKind::Unavailable);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!finished.load(Ordering::SeqCst));
    assert!(matches!(
        Runner::new(Pipeline::new(map_fn("x", |x: u32| Ok(x))))
            .max_in_flight(0)
            .start()
            .await,
        Err(StartError::InvalidConfig(_))
    ));
}

/// Records `finish` calls and whether all inputs had arrived before it.
struct Finisher {
    seen: Arc<AtomicUsize>,
    finished_after: Arc<AtomicUsize>,
}
impl Stage<u32, ()> for Finisher {
    async fn run(&mut self, _x: u32) -> Result<(), StageError> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), StageError> {
        self.finished_after
            .store(self.seen.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_drains_in_flight_runs_then_finishes_stages() {
    let seen = Arc::new(AtomicUsize::new(0));
    let finished_after = Arc::new(AtomicUsize::new(usize::MAX));
    let pipeline = Pipeline::new(stage_fn("slow", |x: u32| async move {
        tokio::task::yield_now().await;
        Ok(x)
    }))
    .then(Finisher {
        seen: seen.clone(),
        finished_after: finished_after.clone(),
    });
    let running = Runner::new(pipeline)
        .max_in_flight(16)
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..16 {
        feed.send(i).await.unwrap();
    }
    // 16 accepted, shutdown right away: all must be processed before `finish`.
    let report = running.shutdown().await;
    assert!(report.drained);
    assert_eq!(report.monitor.completed, 16);
    assert_eq!(finished_after.load(Ordering::SeqCst), 16);
}

#[tokio::test]
async fn drain_deadline_fails_stuck_runs_into_the_dead_letters() {
    let release = Arc::new(Mutex::new(()));
    let guard = release.clone().lock_owned().await;
    let r = release.clone();
    let pipeline = Pipeline::new(stage_fn("stuck", move |x: u32| {
        let r = r.clone();
        async move {
            let _g = r.lock().await;
            Ok(x)
        }
    }));
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .dead_letters(dlq.clone())
        .drain_timeout(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    for i in 0..3 {
        feed.send(i).await.unwrap();
    }
    let report = running.shutdown().await;
    drop(guard);
    assert!(!report.drained);
    assert_eq!(report.monitor.failed, 3, "{}", report.monitor);
    assert_eq!(dlq.len(), 3);
    assert!(
        dlq.list()
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
}

#[tokio::test]
async fn via_bus_hands_values_over_and_keeps_run_accounting() {
    let bus = InMemoryHandoff::new();
    let topic = Topic::new("jobs.doubled").unwrap();
    let (out, collect) = collector::<String>();
    let pipeline = Pipeline::new(map_fn("double", |x: u32| Ok(x * 2)))
        .via_bus(bus.clone(), topic.clone())
        .then(map_fn("show", |x: u32| Ok(x.to_string())))
        .then(collect);
    assert_eq!(
        pipeline.describe(),
        "double → bus:jobs.doubled → show → collect"
    );
    // Something else listening on the same topic sees the hand-off traffic.
    let mut tap = bus.subscribe(&topic).await.unwrap();
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let mut running = Runner::new(pipeline)
        .max_in_flight(8)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(IterSource::new(0..50u32));
    // A foreign envelope (published by "another process") starts its own run; a malformed one
    // fails into the dead letters with its bytes.
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 50).await);
    bus.publish(Envelope::new(topic.clone(), "1000"))
        .await
        .unwrap();
    bus.publish(Envelope::new(topic.clone(), "not-a-number"))
        .await
        .unwrap();
    assert!(monitor.wait_until(WAIT, |m| m.settled() == 52).await);
    let report = running.run_until(std::future::ready(())).await;
    let m = &report.monitor;
    assert_eq!((m.accepted, m.completed, m.failed), (52, 51, 1));
    assert_eq!(m.op("bus:jobs.doubled", "publish").unwrap().success, 50);
    assert_eq!(m.op("bus:jobs.doubled", "receive").unwrap().success, 51);
    let mut got: Vec<u32> = out
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    got.sort();
    let mut want: Vec<u32> = (0..50).map(|x| x * 2).collect();
    want.push(1000);
    want.sort();
    assert_eq!(got, want);
    assert_eq!(dlq.list()[0].envelope.payload.as_ref(), b"not-a-number");
    use futures::StreamExt;
    let first = tap.next().await.unwrap();
    assert_eq!(first.envelope.topic, topic);
}

#[tokio::test]
async fn bus_sink_and_bus_source_split_a_pipeline_in_two() {
    let bus = InMemoryHandoff::new();
    let topic = Topic::new("readings.parsed").unwrap();
    // Second half first, so its subscription exists before the first half publishes.
    let (out, collect) = collector::<u64>();
    let second = Pipeline::new(map_fn("inc", |x: u64| Ok(x + 1))).then(collect);
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let mut second = Runner::new(second)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let second_monitor = second.monitor().clone();
    // The bus source subscribes when it starts running; wait until the subscription exists by
    // probing with a malformed envelope (dead-lettered), which is itself part of the test.
    second.spawn_source(BusSource::<_, u64>::new(bus.clone(), topic.clone()));
    let probe = async {
        loop {
            bus.publish(Envelope::new(topic.clone(), "probe"))
                .await
                .unwrap();
            if second_monitor
                .wait_until(Duration::from_millis(20), |m| m.rejected() > 0)
                .await
            {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, probe).await.unwrap();

    let first = Pipeline::new(map_fn("square", |x: u64| Ok(x * x)))
        .then(BusSink::new(bus.clone(), topic.clone()));
    let mut first = Runner::new(first).start().await.unwrap();
    first.spawn_source(IterSource::new(1..=10u64));
    let r1 = first.run_until(std::future::pending::<()>()).await;
    assert_eq!(r1.monitor.completed, 10);
    assert!(
        second_monitor
            .wait_until(WAIT, |m| m.completed() == 10)
            .await
    );
    let r2 = second.shutdown().await;
    assert_eq!(r2.monitor.completed, 10);
    assert!(r2.monitor.rejected >= 1);
    let mut got = out.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (1..=10u64).map(|x| x * x + 1).collect::<Vec<_>>());
    assert!(
        dlq.list()
            .iter()
            .all(|l| l.reason == DeadLetterReason::DecodeFailed)
    );
}

/// `switchyard-middleware`'s resilience stack around an envelope handler, used as a stage: a
/// handler failing once per message still completes every run, retried by the layer (three
/// failures in all stay under the default breaker's threshold of five).
#[tokio::test(start_paused = true)]
async fn middleware_resilience_layer_wraps_a_stage() {
    use switchyard_core::{BoxError, Outcome};
    use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
    use switchyard_pipeline::service_stage;
    use tower::Layer;

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = ResilienceLayer::new("flaky", ResilienceConfig::default()).layer(
        tower::service_fn(move |_env: Envelope| {
            // Odd calls succeed, even calls (each message's first attempt) fail.
            let odd = c.fetch_add(1, Ordering::SeqCst) % 2;
            async move {
                if odd == 0 {
                    Err::<Outcome, BoxError>(std::io::Error::other("transient").into())
                } else {
                    Ok(Outcome::Ack)
                }
            }
        }),
    );
    let (out, collect) = collector::<Outcome>();
    let pipeline = Pipeline::new(service_stage("flaky", handler)).then(collect);
    let mut running = Runner::new(pipeline).start().await.unwrap();
    let topic = Topic::new("jobs.flaky").unwrap();
    running.spawn_source(IterSource::new(
        (0..3).map(move |i| Envelope::new(topic.clone(), format!("{i}"))),
    ));
    let report = running.run_until(std::future::pending::<()>()).await;
    assert_eq!((report.monitor.completed, report.monitor.failed), (3, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(out.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn several_sources_feed_one_pipeline() {
    let (out, collect) = collector::<u32>();
    let mut running = Runner::new(Pipeline::new(map_fn("id", |x: u32| Ok(x))).then(collect))
        .start()
        .await
        .unwrap();
    running.spawn_source(IterSource::new(0..100u32));
    running.spawn_source(IterSource::new(1000..1050u32));
    let manual = running.feed();
    manual.send(5000).await.unwrap();
    let report = running.run_until(std::future::pending::<()>()).await;
    assert_eq!(report.reason, StopReason::SourcesFinished);
    assert_eq!(report.monitor.completed, 151);
    let mut got = out.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<u32> = (0..100).chain(1000..1050).collect();
    want.push(5000);
    assert_eq!(got, want);
}

#[tokio::test]
async fn via_bus_runs_over_the_switchyard_bus() {
    let bus = switchyard::Bus::new();
    let topic = Topic::new("jobs.tripled").unwrap();
    let (out, collect) = collector::<u32>();
    let pipeline = Pipeline::new(map_fn("triple", |x: u32| Ok(x * 3)))
        .via_bus(
            switchyard_pipeline::BusHandoff::new(bus.clone()),
            topic.clone(),
        )
        .then(collect);
    let mut running = Runner::new(pipeline)
        .max_in_flight(8)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(IterSource::new(0..100u32));
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 100).await);
    // the hand-off is an ordinary bus subscription, visible in the registry
    let reg = bus.registry();
    let handoff = reg
        .iter()
        .find(|s| s.name == "pipeline-handoff:jobs.tripled")
        .unwrap();
    assert_eq!(handoff.stats.acked, 100);
    let report = running.run_until(std::future::ready(())).await;
    assert_eq!((report.monitor.completed, report.monitor.failed), (100, 0));
    let mut got = out.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..100).map(|x| x * 3).collect::<Vec<_>>());
}
