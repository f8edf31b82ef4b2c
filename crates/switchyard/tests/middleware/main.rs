//! The bus with `switchyard-middleware` layers: resilience around a subscription, dead-letter
//! replay with dedup, and one trace across a chain of handlers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, Outcome, Topic, boxed};
use switchyard_middleware::breaker::{BreakerConfig, BreakerState};
use switchyard_middleware::dedup::DedupConfig;
use switchyard_middleware::dlq::{DeadLetterQueue, InMemoryDeadLetters, Replayer};
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::RetryPolicy;
use switchyard_middleware::trace::{TraceContext, TraceLayer, ensure_traceparent};

mod labels;
mod noticed_stop36;
mod panicking_admission;
mod resilience_defaults;
mod resilience_for;
mod review_rev16;
mod review_rev34;
mod review_rev4;
mod undecodable;

fn order(i: u32) -> Envelope {
    Envelope::new(Topic::new("orders.placed").unwrap(), format!("{i}"))
}

/// Replays every dead letter through the bus twice (keeping the entries the first time), so
/// a test can check that dedup makes the second replay a no-op.
async fn replay_twice(bus: &Bus, dlq: &dyn DeadLetterQueue) {
    let b = bus.clone();
    let republish = move |env: Envelope| {
        let b = b.clone();
        async move { b.publish_envelope(env).await }
    };
    Replayer::new(dlq, &republish)
        .keep_entries(true)
        .all()
        .await;
    bus.run_until_idle().await;
    Replayer::new(dlq, &republish).all().await;
    bus.run_until_idle().await;
}

/// A handler that fails until `healthy` is set, counting its calls.
fn flaky(
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
    handled: Arc<Mutex<Vec<switchyard::MessageId>>>,
) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        let ok = healthy.load(Ordering::SeqCst);
        if ok {
            handled.lock().unwrap().push(e.id);
        }
        async move {
            if ok {
                Ok::<_, BoxError>(Outcome::Ack)
            } else {
                Err("backend down".into())
            }
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_pauses_the_subscription_instead_of_burning_messages() {
    // retries inside the layer; the bus itself does not retry a layer's final answer
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let (healthy, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let t = transitions.clone();
    let layer = ResilienceLayer::new(
        "orders",
        ResilienceConfig::default()
            .retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .initial_delay(Duration::from_millis(10)),
            )
            .breaker(
                BreakerConfig::default()
                    .failures(3)
                    .cool_down(Duration::from_secs(10)),
            )
            .on_breaker_transition(move |e| t.lock().unwrap().push(e.to)),
    );
    let breaker = layer.breaker();
    let handler = flaky(healthy.clone(), calls.clone(), Arc::default());
    let sub = bus
        .subscribe("orders", "orders.#", handler)
        .layer(layer)
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        bus.publish_envelope(order(i)).await.unwrap();
    }
    // wait (in virtual time) for the breaker to open
    while breaker.state() != BreakerState::Open {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let calls_when_open = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_when_open,
        "no calls while open"
    );
    assert!(
        sub.info().depth >= 7,
        "messages stay queued while open: {:?}",
        sub.info()
    );
    healthy.store(true, Ordering::SeqCst);
    bus.run_until_idle().await;
    assert_eq!(breaker.state(), BreakerState::Closed);
    let s = sub.stats();
    assert_eq!(
        s.acked + s.dead_lettered,
        10,
        "every message ends acked or dead-lettered: {s:?}"
    );
    assert!(
        s.acked >= 8,
        "only messages failing before the breaker opened are dead-lettered: {s:?}"
    );
    assert_eq!(
        *transitions.lock().unwrap(),
        [
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dead_letters_replay_through_the_bus_exactly_once_with_dedup() {
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .max_attempts(1)
        .dead_letters(dlq.clone())
        .build()
        .unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let layer = ResilienceLayer::new(
        "orders",
        ResilienceConfig::default()
            .dedup(DedupConfig::default())
            .retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .initial_delay(Duration::from_millis(1)),
            )
            .breaker(BreakerConfig::default().failures(1000)),
    );
    let handler = flaky(healthy.clone(), Arc::default(), handled.clone());
    let _sub = bus
        .subscribe("orders", "orders.#", handler)
        .layer(layer)
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish_envelope(order(i)).await.unwrap();
    }
    bus.run_until_idle().await;
    assert_eq!(dlq.len(), 5);
    healthy.store(true, Ordering::SeqCst);
    replay_twice(&bus, &*dlq).await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled.len(),
        5,
        "each dead letter handled exactly once: {handled:?}"
    );
    assert!(dlq.is_empty());
}

#[tokio::test]
async fn a_chain_of_handlers_forms_one_trace_through_the_publish_hook() {
    let bus = Bus::builder()
        .publish_hook(|env| {
            ensure_traceparent(env);
            Ok(())
        })
        .build()
        .unwrap();
    let all = Recorder::start(&bus, "chain.#").await.unwrap();
    for (name, from, to) in [
        ("one", "chain.one", "chain.two"),
        ("two", "chain.two", "chain.three"),
    ] {
        let b = bus.clone();
        let handler = boxed(tower::service_fn(move |_e: Envelope| {
            let b = b.clone();
            async move {
                b.publish_envelope(Envelope::new(Topic::new(to)?, "{}"))
                    .await?;
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
        bus.subscribe(name, from, handler)
            .layer(TraceLayer::new(name))
            .start()
            .await
            .unwrap()
            .detach();
    }
    bus.publish_envelope(Envelope::new(Topic::new("chain.one").unwrap(), "{}"))
        .await
        .unwrap();
    let got = all.wait_for(3, Duration::from_secs(5)).await.unwrap();
    let traces: Vec<_> = got
        .iter()
        .map(|e| {
            TraceContext::from_envelope(e)
                .expect("traceparent set")
                .trace_id()
        })
        .collect();
    assert!(
        traces.windows(2).all(|w| w[0] == w[1]),
        "one trace id across the chain: {traces:?}"
    );
    let spans: Vec<_> = got
        .iter()
        .map(|e| e.header("traceparent").unwrap().to_owned())
        .collect();
    assert_ne!(spans[0], spans[1], "each hop has its own parent span");
}

#[tokio::test(start_paused = true)]
async fn default_resilience_dead_letters_to_a_file_that_replays_after_a_restart() {
    use switchyard_middleware::dlq::{FileDeadLetterQueue, FileDlqOptions};
    let dir = tempfile::tempdir().unwrap();
    let dedup = || ResilienceConfig::default().dedup(DedupConfig::default());
    // first life: the backend is down, every message ends in the file queue
    {
        let bus = Bus::builder()
            .data_dir(dir.path())
            .with_resilience(dedup)
            .build()
            .unwrap();
        let breaker_events = Recorder::start(&bus, "switchyard.breaker.#").await.unwrap();
        let handler = flaky(
            Arc::new(AtomicBool::new(false)),
            Arc::default(),
            Arc::default(),
        );
        let _sub = bus
            .subscribe("orders", "orders.#", handler)
            .start()
            .await
            .unwrap();
        for i in 0..4 {
            bus.publish_envelope(order(i)).await.unwrap();
        }
        bus.run_until_idle().await;
        let opened = breaker_events
            .wait_for(1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(opened[0].topic.as_str(), "switchyard.breaker.opened");
        bus.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    // second life: reopen the file, replay twice into a healthy handler
    let path = switchyard::resilience::dead_letter_file(dir.path());
    let dlq = Arc::new(FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap());
    assert_eq!(dlq.len(), 4, "the dead letters survived the restart");
    let bus = Bus::builder()
        .with_resilience(dedup)
        .dead_letters(dlq.clone())
        .build()
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = flaky(
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
        handled.clone(),
    );
    let _sub = bus
        .subscribe("orders", "orders.#", handler)
        .start()
        .await
        .unwrap();
    replay_twice(&bus, &*dlq).await;
    assert_eq!(
        handled.lock().unwrap().len(),
        4,
        "every message processed exactly once"
    );
    assert!(dlq.is_empty());
}
