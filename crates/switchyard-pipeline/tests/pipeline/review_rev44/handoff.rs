//! Hand-off through the bus: backpressure across a `via_bus` hop, and foreign envelopes on the
//! hop's topic while the pipeline is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{
    BusHandoff, Handoff, InMemoryHandoff, IterSource, Pipeline, Runner, StageError, map_fn,
    stage_fn,
};
use tokio::sync::Semaphore;

use crate::{WAIT, collector};

/// docs/pipelines.md, "Hand-off through the bus": "a run stays in flight while its envelope is
/// on the bus", and "Running": `send` waits while `max_in_flight` runs are in flight. A slow
/// stage after the hop must hold the source at the bound (the hop does not buffer without
/// bound); every value crosses once.
#[tokio::test(start_paused = true)]
async fn a_slow_stage_after_a_bus_hop_holds_the_source_at_the_in_flight_bound() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let bus = InMemoryHandoff::new();
    let topic = Topic::new("readings.parsed").unwrap();
    let (out, sink) = collector::<u64>();
    let pipeline = Pipeline::new(map_fn("parse", |x: u64| Ok(x)))
        .via_bus(bus.clone(), topic.clone())
        .then(stage_fn("aggregate", move |x: u64| {
            let g = g.clone();
            async move {
                g.acquire().await.map_err(StageError::other)?.forget();
                Ok(x)
            }
        }))
        .then(sink);
    let mut running = Runner::new(pipeline)
        .max_in_flight(4)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(IterSource::new((0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    })));
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 4).await);
    tokio::time::sleep(Duration::from_secs(60)).await; // virtual: every task ran until idle
    let snap = monitor.snapshot();
    assert_eq!((snap.accepted, snap.in_flight()), (4, 4));
    assert!(
        pulled.load(Ordering::SeqCst) <= 5,
        "{}",
        pulled.load(Ordering::SeqCst)
    );
    let hop = format!("bus:{topic}");
    assert_eq!(snap.op(&hop, "publish").unwrap().success, 4);
    assert_eq!(snap.op(&hop, "receive").unwrap().success, 4);
    gate.add_permits(100_000);
    assert!(monitor.wait_until(WAIT, |m| m.completed() >= 200).await);
    let report = running.run_until(std::future::ready(())).await;
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!((m.failed, m.rejected), (0, 0));
    assert_eq!(m.op(&hop, "publish").unwrap().success, m.completed);
    let mut got = out.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        (0..m.completed).collect::<Vec<_>>(),
        "each value crossed once"
    );
}

/// docs/pipelines.md, "Hand-off through the bus": "envelopes on the topic published by anyone
/// else start new runs", and a run "stays in flight while its envelope is on the bus".
/// With every in-flight slot held by a run whose envelope is on the bus, a foreign envelope
/// arriving first must not stop the pipeline's own envelopes from coming back: both runs end.
async fn a_foreign_envelope_while_every_slot_waits_on_the_hop<H: Handoff + Clone>(
    bus: H,
    topic: Topic,
    publish: impl AsyncFnOnce(Envelope),
) {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let (out, sink) = collector::<u64>();
    let pipeline = Pipeline::new(stage_fn("parse", move |x: u64| {
        let g = g.clone();
        async move {
            g.acquire().await.map_err(StageError::other)?.forget();
            Ok(x)
        }
    }))
    .via_bus(bus.clone(), topic.clone())
    .then(map_fn("enrich", |x: u64| Ok(x + 1)))
    .then(sink);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .max_in_flight(1)
        .dead_letters(dlq.clone())
        .drain_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    let feed = running.feed();
    // Our run takes the only slot and sits in `parse`.
    feed.send(41).await.unwrap();
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 1).await);
    // Another process publishes on the hop's topic: it reaches the hop's subscription first.
    publish(Envelope::new(topic.clone(), "99")).await;
    // Our run goes on: its envelope is published behind the foreign one.
    gate.add_permits(1);
    let both_ended = monitor.wait_until(WAIT, |m| m.completed() == 2).await;
    let report = running.shutdown().await;
    let m = &report.monitor;
    assert!(
        both_ended,
        "the pipeline stalled: accepted {} completed {} failed {} rejected {}; drained {}; dead letters {:?}",
        m.accepted,
        m.completed,
        m.failed,
        m.rejected,
        report.drained,
        dlq.list()
            .iter()
            .map(|l| (l.reason, l.error.clone()))
            .collect::<Vec<_>>()
    );
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (2, 2, 0, 0)
    );
    let mut got = out.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![42, 100]);
    assert!(
        dlq.list()
            .iter()
            .all(|l| l.reason != DeadLetterReason::Shutdown)
    );
}

#[tokio::test]
async fn a_foreign_envelope_while_every_slot_waits_on_an_in_memory_hop_does_not_stall() {
    let bus = InMemoryHandoff::new();
    let b = bus.clone();
    a_foreign_envelope_while_every_slot_waits_on_the_hop(
        bus,
        Topic::new("jobs.parsed").unwrap(),
        async move |env| b.publish(env).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn a_foreign_envelope_while_every_slot_waits_on_a_switchyard_bus_hop_does_not_stall() {
    let bus = switchyard::Bus::new();
    let handoff = BusHandoff::new(bus.clone()); // default 64 hand-off workers
    let b = handoff.clone();
    a_foreign_envelope_while_every_slot_waits_on_the_hop(
        handoff,
        Topic::new("jobs.parsed").unwrap(),
        async move |env| b.publish(env).await.unwrap(),
    )
    .await;
}
