//! Shortcut 6: the worker's first-poll path (`start_call` / `finish_call`),
//! `complete_and_pop`, and prefetch. ARCHITECTURE.md, step 4: "a pending future is polled on
//! by `finish_call`, first after the wake its first poll asked for, so a handler that yields
//! lets other tasks run"; "When the handler is ready again at once, completing the last
//! message and taking the next happen under one lock"; Invariants: "One lane, one worker. A
//! keyed message is only taken when no worker holds its lane, a lane is strictly FIFO [...]
//! and retries happen in place, so per-key order holds with any number of workers."

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use switchyard::{BoxError, Bus, Envelope, Outcome, Topic};

use crate::ReadyGate;

/// What the handler was called with: (key, seq, attempt).
type Calls = Arc<Mutex<Vec<(u8, u32, u32)>>>;

/// A raw handler: ready only while `gate` is open; yields `yields` times (from the header)
/// before answering; fails the first attempt of messages with a `fail` header.
#[derive(Clone)]
struct Yielding {
    gate: ReadyGate,
    calls: Calls,
}

impl tower::Service<Envelope> for Yielding {
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.gate.poll(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let calls = Arc::clone(&self.calls);
        Box::pin(async move {
            let key: u8 = env.header("key").unwrap().parse().unwrap();
            let seq: u32 = env.header("seq").unwrap().parse().unwrap();
            let yields: u32 = env.header("yields").unwrap().parse().unwrap();
            calls.lock().unwrap().push((key, seq, env.delivery.attempt));
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            if env.header("fail").is_some() && env.delivery.attempt == 1 {
                return Err("first attempt fails".into());
            }
            Ok(Outcome::Ack)
        })
    }
}

fn run(msgs: &[(u8, u32, bool)], workers: usize, close_at: usize) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = Bus::new();
        let gate = ReadyGate::default();
        gate.set(true);
        let calls: Calls = Arc::default();
        let _sub = bus
            .subscribe(
                "rev40-yielding",
                "rev40.keyed",
                switchyard::boxed(Yielding {
                    gate: gate.clone(),
                    calls: Arc::clone(&calls),
                }),
            )
            .ordering_header("key")
            .workers(workers)
            .max_attempts(3)
            .retry_delay(Duration::ZERO)
            .start()
            .await
            .unwrap();
        for (seq, (key, yields, fail)) in msgs.iter().enumerate() {
            if seq == close_at {
                gate.set(false); // not ready: what comes now waits in the queue
            }
            let mut env = Envelope::new(Topic::new("rev40.keyed").unwrap(), "x")
                .with_header("key", key.to_string())
                .with_header("seq", seq.to_string())
                .with_header("yields", yields.to_string());
            if *fail {
                env = env.with_header("fail", "1");
            }
            bus.publish_envelope(env).await.unwrap();
        }
        gate.set(true);
        bus.run_until_idle().await;
        let calls = calls.lock().unwrap();
        // Per key: the calls in publish order, a failed first attempt retried at once.
        let mut by_key: BTreeMap<u8, Vec<(u32, u32)>> = BTreeMap::new();
        for (key, seq, attempt) in calls.iter() {
            by_key.entry(*key).or_default().push((*seq, *attempt));
        }
        for (key, got) in by_key {
            let mut want = Vec::new();
            for (seq, (k, _, fail)) in msgs.iter().enumerate() {
                if *k == key {
                    want.push((seq as u32, 1));
                    if *fail {
                        want.push((seq as u32, 2));
                    }
                }
            }
            prop_assert_eq!(got, want, "key {}", key);
        }
        let total: usize = msgs.iter().map(|m| if m.2 { 2 } else { 1 }).sum();
        prop_assert_eq!(calls.len(), total);
        prop_assert!(bus.dead_letters().unwrap().is_empty());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Keyed messages to handlers that yield a random number of times, fail some first
    /// attempts, and stop being ready part-way: each key's calls come in publish order (the
    /// retry right after its failed attempt), every message is handled once, with 1..4
    /// workers.
    #[test]
    fn per_key_order_holds_through_yielding_failing_and_not_ready_handlers(
        msgs in proptest::collection::vec((0u8..4, 0u32..4, prop::bool::weighted(0.2)), 1..60),
        workers in 1usize..5,
        close_at in 0usize..70,
    ) {
        run(&msgs, workers, close_at)?;
    }
}

/// `Bus::subscribe_prefetch`: "Messages handed over and not answered yet count as in
/// flight"; a failed message is retried alone. Keyed messages to a prefetch handler with two
/// workers: each key's messages are answered in order, a failure is retried before the next
/// of its key, and each is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_handler_keeps_per_key_order_through_retries() {
    let bus = Bus::new();
    let calls: Arc<Mutex<Vec<(u8, u32, u32)>>> = Arc::default();
    let calls2 = Arc::clone(&calls);
    let handler: switchyard::BoxPrefetchHandler =
        tower::util::BoxCloneService::new(tower::service_fn(move |batch: Vec<Envelope>| {
            let calls = Arc::clone(&calls2);
            async move {
                let mut answers = Vec::new();
                for env in batch {
                    let key: u8 = env.header("key").unwrap().parse().unwrap();
                    let seq: u32 = env.header("seq").unwrap().parse().unwrap();
                    calls.lock().unwrap().push((key, seq, env.delivery.attempt));
                    tokio::task::yield_now().await;
                    answers.push(if seq.is_multiple_of(5) && env.delivery.attempt == 1 {
                        Err::<Outcome, BoxError>("fives fail once".into())
                    } else {
                        Ok(Outcome::Ack)
                    });
                }
                Ok::<_, BoxError>(answers)
            }
        }));
    let _sub = bus
        .subscribe_prefetch("rev40-prefetch", "rev40.prefetch", handler, 8)
        .ordering_header("key")
        .workers(2)
        .max_attempts(3)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    for seq in 0..200u32 {
        let env = Envelope::new(Topic::new("rev40.prefetch").unwrap(), "x")
            .with_header("key", (seq % 3).to_string())
            .with_header("seq", seq.to_string());
        bus.publish_envelope(env).await.unwrap();
    }
    bus.run_until_idle().await;
    let calls = calls.lock().unwrap();
    let mut by_key: BTreeMap<u8, Vec<(u32, u32)>> = BTreeMap::new();
    for (key, seq, attempt) in calls.iter() {
        by_key.entry(*key).or_default().push((*seq, *attempt));
    }
    for (key, got) in by_key {
        let mut want = Vec::new();
        for seq in (0..200u32).filter(|s| (s % 3) as u8 == key) {
            want.push((seq, 1));
            if seq % 5 == 0 {
                want.push((seq, 2));
            }
        }
        assert_eq!(got, want, "key {key}");
    }
    assert!(bus.dead_letters().unwrap().is_empty());
    assert_eq!(bus.pending(), 0);
}
