//! `BusBuilder::with_resilience_for` (a config per handler) and `on_resilience_stack` (the
//! stacks' handles): per-handler breakers, whose events the bus publishes unless the config
//! observes them itself, and the attempts, resolved as under `with_resilience`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, Outcome, Topic, handler_fn};
use switchyard_middleware::breaker::{BreakerConfig, BreakerHandle, BreakerState};
use switchyard_middleware::resilience::ResilienceConfig;
use switchyard_middleware::retry::RetryPolicy;

/// A handler that counts its calls and always fails.
fn failing(calls: Arc<Mutex<u32>>) -> switchyard::BoxHandler {
    handler_fn(move |_env: Envelope| {
        *calls.lock().unwrap() += 1;
        async move { Err::<Outcome, BoxError>("down".into()) }
    })
}

fn ev(topic: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), "x")
}

/// Three handlers, three configs: `fragile` opens at its first failure (the bus publishes the
/// change), `observed` too but with an observer of its own (told, and nothing published),
/// `steady` has the default breaker (5 failures: still closed after one). The hook is told of
/// each stack, with the pattern it was registered for and the stack's own breaker.
#[tokio::test(start_paused = true)]
async fn each_handler_gets_its_config_and_the_hook_its_breaker() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let stacks: Arc<Mutex<Vec<(String, String, BreakerHandle)>>> = Arc::default();
    let seen = stacks.clone();
    let bus = Bus::builder()
        .max_attempts(1)
        .with_resilience_for(move |target| {
            let config = ResilienceConfig::default();
            match target.name {
                "fragile" => config.breaker(BreakerConfig::default().failures(1)),
                "observed" => {
                    let tx = tx.lock().unwrap().clone();
                    config
                        .breaker(BreakerConfig::default().failures(1))
                        .on_breaker_transition(move |e| {
                            let _ = tx.send((e.handler.to_string(), e.to));
                        })
                }
                _ => config,
            }
        })
        .on_resilience_stack(move |target, stack| {
            seen.lock().unwrap().push((
                target.name.to_owned(),
                target.pattern.to_owned(),
                stack.breaker(),
            ));
        })
        .build()
        .unwrap();
    let events = Recorder::start(&bus, "switchyard.breaker.#").await.unwrap();
    let mut subs = Vec::new();
    let mut calls = Vec::new();
    for (name, pattern) in [("fragile", "a.#"), ("observed", "b.#"), ("steady", "c.#")] {
        let count = Arc::new(Mutex::new(0));
        calls.push(count.clone());
        subs.push(
            bus.subscribe(name, pattern, failing(count))
                .start()
                .await
                .unwrap(),
        );
    }
    for topic in ["a.x", "b.x", "c.x"] {
        bus.publish_envelope(ev(topic)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), bus.run_until_idle())
        .await
        .expect("settles");
    for count in &calls {
        assert_eq!(*count.lock().unwrap(), 1, "the builder's max_attempts(1)");
    }
    let stacks = std::mem::take(&mut *stacks.lock().unwrap());
    let state = |name: &str| {
        let (_, pattern, handle) = stacks
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("the hook was told of {name}: {stacks:?}"));
        assert_eq!(handle.handler(), name);
        (pattern.clone(), handle.state())
    };
    assert_eq!(state("fragile"), ("a.#".to_owned(), BreakerState::Open));
    assert_eq!(state("observed"), ("b.#".to_owned(), BreakerState::Open));
    assert_eq!(state("steady"), ("c.#".to_owned(), BreakerState::Closed));
    assert_eq!(
        rx.try_iter().collect::<Vec<_>>(),
        [("observed".to_owned(), BreakerState::Open)],
        "the config's own observer"
    );
    events.wait_for(1, Duration::from_secs(10)).await.unwrap();
    bus.run_until_idle().await;
    let published: Vec<(String, Option<String>)> = events
        .envelopes()
        .iter()
        .map(|e| (e.topic.to_string(), e.source().map(str::to_owned)))
        .collect();
    assert_eq!(
        published,
        [(
            "switchyard.breaker.opened".to_owned(),
            Some("fragile".to_owned())
        )],
        "only the unobserved breaker's change is published"
    );
}

/// The stack's attempts: the default retry policy's 3 (not the config's own count), or a
/// subscription's `max_attempts(n)`: n calls, the worker calling the stack once.
#[tokio::test(start_paused = true)]
async fn attempts_are_the_default_policy_s_or_the_subscription_s() {
    let bus = Bus::builder()
        .with_resilience_for(|_| {
            ResilienceConfig::default().retry(RetryPolicy::default().max_attempts(7))
        })
        .build()
        .unwrap();
    let plain = Arc::new(Mutex::new(0));
    let two = Arc::new(Mutex::new(0));
    let _a = bus
        .subscribe("plain", "p.#", failing(plain.clone()))
        .start()
        .await
        .unwrap();
    let _b = bus
        .subscribe("two", "t.#", failing(two.clone()))
        .max_attempts(2)
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("p.x")).await.unwrap();
    bus.publish_envelope(ev("t.x")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), bus.run_until_idle())
        .await
        .expect("settles");
    assert_eq!(
        *plain.lock().unwrap(),
        3,
        "RetryPolicy::default()'s attempts"
    );
    assert_eq!(*two.lock().unwrap(), 2, "the subscription's max_attempts");
    let letters = bus.dead_letters().unwrap().list();
    let mut attempts: Vec<(String, u32)> = letters
        .iter()
        .map(|l| {
            (
                l.handler.clone().unwrap_or_default().to_string(),
                l.attempts,
            )
        })
        .collect();
    attempts.sort();
    assert_eq!(attempts, [("plain".to_owned(), 3), ("two".to_owned(), 2)]);
}
