//! Runs through a parse → enrich → aggregate → sink chain: accounting under errors, retries,
//! timeouts, sources that fail / end at once / never end, backpressure, abandoned sends, and the
//! monitor's figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{
    Feed, IterSource, Pipeline, RetryPolicy, Runner, Source, SourceError, Stage, StageError,
    StageErrorKind, StageExt, StopReason, StopSignal, map_fn, stage_fn,
};
use tokio::sync::Semaphore;

use crate::{WAIT, collector};

/// A stateful aggregate stage: a running sum per input, `finish` counted.
struct Aggregate {
    sum: u64,
    finished: Arc<AtomicUsize>,
}
impl Stage<u64, (u64, u64)> for Aggregate {
    async fn run(&mut self, x: u64) -> Result<(u64, u64), StageError> {
        self.sum += x;
        Ok((x, self.sum))
    }
    async fn finish(&mut self) -> Result<(), StageError> {
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn parse() -> impl Stage<Bytes, u64> {
    map_fn("parse", |b: Bytes| {
        std::str::from_utf8(&b)
            .map_err(StageError::decode)?
            .parse::<u64>()
            .map_err(StageError::decode)
    })
}

/// docs/pipelines.md, "Resilience wrappers": `with_timeout` fails a slow call with kind `Timeout`;
/// `with_retry(RetryPolicy::attempts(4))` "retries Timeout/Io/Unavailable, backoff 100 ms ×2 ≤
/// 10 s, full jitter". "Running": "Every acknowledged message ends in exactly one of: completed,
/// or failed (dead-lettered with its origin and the failing stage's name and error chain)".
/// "Stages": "`run` is never called concurrently for one stage".
#[tokio::test(start_paused = true)]
async fn retries_and_timeouts_on_a_paused_clock_end_every_input_exactly_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let attempts_of = Arc::new(std::sync::Mutex::new(
        std::collections::HashMap::<u64, u32>::new(),
    ));
    let (c, a) = (calls.clone(), attempts_of.clone());
    // enrich: x % 5 == 0 fails Unavailable twice then succeeds; x % 7 == 0 is invalid (not
    // retried); x == 11 hangs every attempt (times out 4 times).
    let enrich = stage_fn("enrich-inner", move |x: u64| {
        c.fetch_add(1, Ordering::SeqCst);
        let n = {
            let mut m = a.lock().unwrap();
            let n = m.entry(x).or_default();
            *n += 1;
            *n
        };
        async move {
            if x == 11 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if x.is_multiple_of(7) && x != 0 {
                return Err(StageError::invalid("no such sku"));
            }
            if x.is_multiple_of(5) && n <= 2 {
                return Err(StageError::new(
                    StageErrorKind::Unavailable,
                    "price service down",
                ));
            }
            Ok(x * 10)
        }
    })
    .with_timeout(Duration::from_secs(1))
    .with_retry(RetryPolicy::attempts(4))
    .named("enrich");
    let finished = Arc::new(AtomicUsize::new(0));
    let (out, sink) = collector::<(u64, u64)>();
    let pipeline = Pipeline::new(parse())
        .then(enrich)
        .then(Aggregate {
            sum: 0,
            finished: finished.clone(),
        })
        .then(sink);
    let dlq = Arc::new(InMemoryDeadLetters::new(1000));
    let running = Runner::new(pipeline)
        .max_in_flight(16)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    let topic = Topic::new("sku.in").unwrap();
    let started = tokio::time::Instant::now();
    let inputs: Vec<Bytes> = (0..40u64)
        .map(|i| match i {
            13 => Bytes::from_static(b"thirteen"),
            29 => Bytes::from_static(&[0xff, 0xfe]),
            i => Bytes::from(i.to_string()),
        })
        .collect();
    for b in &inputs {
        feed.send_with_origin(b.clone(), Envelope::new(topic.clone(), b.clone()))
            .await
            .unwrap();
    }
    let report = running.shutdown().await;
    let took = started.elapsed();
    let m = &report.monitor;
    assert!(report.drained);
    // Permanent: 13 and 29 (parse), 7, 14, 21, 28, 35 (invalid), 11 (timeouts) = 8 failures.
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.in_flight()),
        (40, 32, 8, 0),
        "{m}"
    );
    let parse_op = m.op("parse", "run").unwrap();
    assert_eq!((parse_op.success, parse_op.errors), (38, 2));
    let enrich_op = m.op("enrich", "run").unwrap();
    assert_eq!((enrich_op.success, enrich_op.errors), (32, 6), "{m}");
    assert_eq!(
        enrich_op.error_types[StageErrorKind::Timeout.as_str()],
        1,
        "{m}"
    );
    // Calls: 38 reach enrich; 0, 5, ..., 30 take 3 each (35 is invalid first); 11 takes 4.
    let attempts = attempts_of.lock().unwrap().clone();
    assert_eq!(attempts[&11], 4);
    assert_eq!(attempts[&7], 1, "invalid input is not retried");
    for x in [0u64, 5, 10, 15, 20, 25, 30] {
        assert_eq!(attempts[&x], 3, "x = {x}");
    }
    assert_eq!(attempts[&35], 1);
    assert_eq!(calls.load(Ordering::SeqCst), 38 + 7 * 2 + 3);
    // Backoff bounds (virtual time): 11 waits 4 × 1 s timeouts + ≤ 100+200+400 ms; each of the six
    // seven retried inputs ≤ 100+200 ms; enrich is serial, so the sum bounds the run.
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(
        took <= Duration::from_millis(4_000 + 700 + 7 * 300 + 100),
        "{took:?}"
    );
    // Sink: every completed input once, in input order (each stage serial, FIFO between them).
    let got = out.lock().unwrap().clone();
    let want: Vec<u64> = (0..40u64)
        .filter(|x| !([13, 29, 11].contains(x) || (x.is_multiple_of(7) && *x != 0)))
        .map(|x| x * 10)
        .collect();
    assert_eq!(got.iter().map(|(x, _)| *x).collect::<Vec<_>>(), want);
    assert_eq!(got.last().unwrap().1, want.iter().sum::<u64>());
    assert_eq!(finished.load(Ordering::SeqCst), 1, "finish runs once");
    // Dead letters: one per failed run, carrying the input's raw bytes and the failing stage.
    let letters = dlq.list();
    assert_eq!(letters.len(), 8);
    let by_payload = |p: &[u8]| {
        letters
            .iter()
            .find(|l| l.envelope.payload.as_ref() == p)
            .unwrap()
    };
    assert_eq!(
        by_payload(&[0xff, 0xfe]).reason,
        DeadLetterReason::DecodeFailed
    );
    assert_eq!(by_payload(b"thirteen").handler.as_deref(), Some("parse"));
    let hung = by_payload(b"11");
    assert_eq!(
        (hung.reason, hung.handler.as_deref()),
        (DeadLetterReason::HandlerFailed, Some("enrich"))
    );
    assert_eq!(by_payload(b"14").handler.as_deref(), Some("enrich"));
}

/// A source that feeds a few items, then fails for good.
struct Flaky {
    feed_first: u64,
}
impl Source<u64> for Flaky {
    async fn run(self, feed: Feed<u64>, _stop: StopSignal) -> Result<(), SourceError> {
        for i in 0..self.feed_first {
            if feed.send(1000 + i).await.is_err() {
                return Ok(());
            }
        }
        Err(SourceError::InvalidConfig(
            "connection reset mid-stream".into(),
        ))
    }
}

/// `RunReport::source_errors`: "Sources that ended with an error (name, error)"; a source ending
/// does not lose what it handed over (acknowledged = completed or failed), and the other sources
/// keep feeding until they end.
#[tokio::test]
async fn a_source_failing_mid_stream_is_reported_and_what_it_fed_completes() {
    let (out, sink) = collector::<u64>();
    let mut running = Runner::new(Pipeline::new(map_fn("enrich", |x: u64| Ok(x + 1))).then(sink))
        .max_in_flight(4)
        .start()
        .await
        .unwrap();
    running.spawn_source(Flaky { feed_first: 7 });
    running.spawn_source(IterSource::new(0..50u64));
    let report = running.run_until(std::future::pending::<()>()).await;
    assert_eq!(report.reason, StopReason::SourcesFinished);
    assert!(report.drained);
    assert_eq!(report.source_errors.len(), 1, "{:?}", report.source_errors);
    let (name, err) = &report.source_errors[0];
    assert_eq!(name, "Flaky");
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(
        (report.monitor.accepted, report.monitor.completed),
        (57, 57)
    );
    let mut got = out.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<u64> = (1..=50).chain(1001..=1007).collect();
    want.sort();
    assert_eq!(got, want);
}

/// An empty source: `run_until` ends "until every source ends", `finish` "runs once after the last
/// input when the pipeline drains", all counters "start at 0".
#[tokio::test]
async fn an_empty_source_ends_at_once_with_zero_counts_and_finishes_every_stage() {
    let finished = Arc::new(AtomicUsize::new(0));
    let (out, sink) = collector::<(u64, u64)>();
    let pipeline = Pipeline::new(parse())
        .then(Aggregate {
            sum: 0,
            finished: finished.clone(),
        })
        .then(sink);
    let mut running = Runner::new(pipeline).start().await.unwrap();
    running.spawn_source(IterSource::new(Vec::<Bytes>::new()));
    let report = tokio::time::timeout(WAIT, running.run_until(std::future::pending::<()>()))
        .await
        .expect("an empty source ends the run");
    assert_eq!(report.reason, StopReason::SourcesFinished);
    assert!(report.drained);
    let m = &report.monitor;
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (0, 0, 0, 0)
    );
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert!(out.lock().unwrap().is_empty());
    assert!(report.finish_errors.is_empty() && report.source_errors.is_empty());
}

/// A source that never ends, stopped by the shutdown future: "Every acknowledged message ends in
/// exactly one of completed or failed"; "nothing acknowledged is dropped silently"; `send` waits
/// while `max_in_flight` runs are in flight (the source is slowed, not buffered).
#[tokio::test]
async fn a_never_ending_source_stopped_mid_stream_loses_nothing_it_handed_over() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let (out, sink) = collector::<u64>();
    let pipeline = Pipeline::new(stage_fn("enrich", |x: u64| async move {
        tokio::task::yield_now().await;
        Ok(x)
    }))
    .then(sink);
    let mut running = Runner::new(pipeline)
        .max_in_flight(8)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(IterSource::new((0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    })));
    let m2 = monitor.clone();
    let report = running
        .run_until(async move { assert!(m2.wait_until(WAIT, |m| m.completed() >= 300).await) })
        .await;
    assert_eq!(report.reason, StopReason::Requested);
    assert!(report.drained);
    let m = &report.monitor;
    assert_eq!(m.accepted, m.completed + m.failed);
    assert_eq!(m.failed, 0);
    let got = out.lock().unwrap().clone();
    assert_eq!(got.len() as u64, m.completed);
    // Exactly the prefix of the stream, in order: no gap, no duplicate.
    assert_eq!(got, (0..m.completed).collect::<Vec<_>>());
    let pulled = pulled.load(Ordering::SeqCst) as u64;
    assert!(
        pulled <= m.accepted + 1,
        "pulled {pulled} from the source, accepted {}",
        m.accepted
    );
}

/// "a task per stage, at most N runs in flight (backpressure to the source)"; crate docs:
/// "the channels never hold more than that many items (times the fan-out factor)". A gated sink
/// behind a three-way fan-out: the source is held at N runs, the sink sees each run's three
/// outputs once released.
#[tokio::test(start_paused = true)]
async fn a_slow_sink_behind_a_fan_out_holds_a_fast_source_at_the_in_flight_bound() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let gate = Arc::new(Semaphore::new(0));
    let sunk = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), sunk.clone());
    let pipeline = Pipeline::new(map_fn("parse", |x: u64| Ok(x)))
        .fan_out(vec![
            Pipeline::new(map_fn("a", |x: u64| Ok(x))),
            Pipeline::new(map_fn("b", |x: u64| Ok(x + 1_000_000))),
            Pipeline::new(map_fn("c", |x: u64| Ok(x + 2_000_000))),
        ])
        .then(stage_fn("sink", move |_x: u64| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                g.acquire().await.map_err(StageError::other)?.forget();
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }));
    let mut running = Runner::new(pipeline)
        .max_in_flight(8)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(IterSource::new((0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    })));
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 8).await);
    // Let every task run until idle (virtual time only moves when all are blocked).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(monitor.accepted(), 8);
    assert!(
        pulled.load(Ordering::SeqCst) <= 9,
        "{}",
        pulled.load(Ordering::SeqCst)
    );
    assert_eq!(monitor.snapshot().in_flight(), 8);
    assert_eq!(monitor.snapshot().op("a", "run").unwrap().success, 8);
    // Release 24 sink calls (which outputs the sink takes first is up to the branch tasks):
    // whatever completes, the source is let in only as far as the bound.
    gate.add_permits(24);
    assert!(monitor.wait_until(WAIT, |m| m.completed() >= 1).await);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(sunk.load(Ordering::SeqCst), 24);
    let snap = monitor.snapshot();
    assert!(snap.in_flight() <= 8, "{snap}");
    assert!(
        snap.completed >= 1 && snap.accepted <= snap.completed + 8,
        "{snap}"
    );
    assert!(pulled.load(Ordering::SeqCst) as u64 <= snap.accepted + 1);
    gate.add_permits(10_000);
    let report = running.run_until(std::future::ready(())).await;
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(m.failed, 0);
    assert_eq!(sunk.load(Ordering::SeqCst) as u64, 3 * m.completed);
}

/// `Feed::send` "waits while the in-flight limit is reached"; a caller that gives up waiting (a
/// timeout around `send`) must not leave a phantom run that the drain then waits for.
#[tokio::test(start_paused = true)]
async fn a_send_abandoned_while_waiting_for_a_slot_does_not_hold_up_the_drain() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let pipeline = Pipeline::new(stage_fn("enrich", move |x: u64| {
        let g = g.clone();
        async move {
            g.acquire().await.map_err(StageError::other)?.forget();
            Ok(x)
        }
    }));
    let running = Runner::new(pipeline)
        .max_in_flight(1)
        .drain_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    feed.send(1).await.unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(50), feed.send(2)).await;
    assert!(abandoned.is_err(), "the second send waits for the slot");
    gate.add_permits(1);
    let monitor = running.monitor().clone();
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 1).await);
    let t0 = tokio::time::Instant::now();
    let report = running.shutdown().await;
    assert!(report.drained, "{}", report.monitor);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!((report.monitor.accepted, report.monitor.completed), (1, 1));
}

/// docs/pipelines.md, "Monitor": counts per stage and operation, `in_flight`; "Running":
/// `settled() = completed + failed + rejected`. Figures read while runs are stuck and after.
#[tokio::test]
async fn the_monitor_figures_match_what_happened_while_running_and_after() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let (out, sink) = collector::<u64>();
    let pipeline = Pipeline::new(parse())
        .then(stage_fn("enrich", move |x: u64| {
            let g = g.clone();
            async move {
                g.acquire().await.map_err(StageError::other)?.forget();
                Ok(x)
            }
        }))
        .then(sink);
    let running = Runner::new(pipeline)
        .max_in_flight(5)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    let feed = running.feed();
    for b in ["1", "x", "2", "y", "3"] {
        feed.send(Bytes::from(b)).await.unwrap();
    }
    assert!(monitor.wait_until(WAIT, |m| m.failed() == 2).await);
    let snap = monitor.snapshot();
    assert_eq!(
        (snap.accepted, snap.completed, snap.failed, snap.in_flight()),
        (5, 0, 2, 3)
    );
    assert_eq!(
        snap.op("parse", "run").map(|o| (o.success, o.errors)),
        Some((3, 2))
    );
    assert_eq!(snap.op("enrich", "run").map(|o| o.success).unwrap_or(0), 0);
    assert_eq!(monitor.settled(), 2);
    gate.add_permits(3);
    let report = running.shutdown().await;
    let m = &report.monitor;
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected, m.in_flight()),
        (5, 3, 2, 0, 0)
    );
    assert_eq!(m.op("enrich", "run").unwrap().success, 3);
    assert_eq!(m.op("collect", "run").unwrap().success, 3);
    assert_eq!(out.lock().unwrap().clone(), vec![1, 2, 3]);
}
