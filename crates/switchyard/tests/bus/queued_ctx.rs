//! Typed handlers over the queued envelope (their `Ctx` kept, moved, retried) and the typed
//! output slot under a layer that runs its handler in a delivered scope of its own (from
//! review rev3 of issue 18; the first test failed while the slot compared envelope addresses).

use std::sync::{Arc, Mutex};

use switchyard::{BoxHandler, Bus, Ctx, Envelope};

use crate::WAIT;
use crate::typed_slot::{MakeOpaque, Opaque};

/// A layer that runs its inner handler in a delivered scope of its own (public API:
/// `switchyard::delivered::scope`), e.g. after rewriting the envelope. The typed sender's
/// output must still be handed over as it is (it has no JSON form).
#[tokio::test(flavor = "current_thread")]
async fn a_typed_output_reaches_its_sender_under_a_layer_that_rescopes_delivered() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let _h = bus
        .handle(|c: MakeOpaque, _| async move { Ok::<_, std::io::Error>(Opaque(c.n)) })
        .layer(tower::layer::layer_fn(|inner: BoxHandler| {
            tower::service_fn(move |env: Envelope| {
                let inner = inner.clone();
                let shared = Arc::new(env.clone());
                switchyard::delivered::scope(shared, tower::ServiceExt::oneshot(inner, env))
            })
        }))
        .start()
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, bus.send(MakeOpaque { n: 7 }))
        .await
        .unwrap();
    assert_eq!(got.unwrap(), Opaque(7));
}

/// A typed event handler that keeps its Ctx past the call: read after later messages were
/// handled (their envelopes' blocks recycled), each Ctx still shows its own message.
#[tokio::test(flavor = "current_thread")]
async fn a_kept_ctx_still_shows_its_own_message() {
    let bus = Bus::new();
    let kept: Arc<Mutex<Vec<(u64, Ctx)>>> = Arc::default();
    let k = kept.clone();
    let _h = bus
        .on("keep", move |p: crate::Ping, ctx: Ctx| {
            k.lock().unwrap().push((p.n, ctx));
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    for n in 0..50u64 {
        bus.publish(crate::Ping { n }).await.unwrap();
    }
    bus.shutdown(WAIT).await.unwrap();
    let kept = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(kept.len(), 50);
    for (n, ctx) in kept {
        assert_eq!(ctx.attempt(), 1);
        let env = ctx.envelope().clone();
        assert_eq!(env.delivery.attempt, 1);
        assert!(env.delivery.first_delivered_at.is_some());
        let p: crate::Ping = serde_json::from_slice(&env.payload).unwrap();
        assert_eq!(p.n, n);
        assert_eq!(ctx.into_envelope(), env);
    }
}

/// Under the resilience stack (its own retries, a timeout), the typed output still reaches
/// its typed sender as it is, also from a retry after a failure and a panic.
#[tokio::test(flavor = "current_thread")]
async fn a_typed_output_reaches_its_sender_through_the_resilience_stack() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use switchyard::middleware::resilience::ResilienceConfig;
    use switchyard::middleware::retry::RetryPolicy;
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(
                    RetryPolicy::default()
                        .max_attempts(3)
                        .initial_delay(std::time::Duration::from_millis(1)),
                )
                .timeout(std::time::Duration::from_secs(5))
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let _h = bus
        .handle(move |c: MakeOpaque, _| {
            let k = c2.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                if k.is_multiple_of(3) {
                    return Err(std::io::Error::other("first"));
                }
                Ok::<_, std::io::Error>(Opaque(c.n))
            }
        })
        .start()
        .await
        .unwrap();
    for n in 1..=3 {
        let got = tokio::time::timeout(WAIT, bus.send(MakeOpaque { n }))
            .await
            .unwrap();
        assert_eq!(got.unwrap(), Opaque(n));
    }
}

/// A typed handler's Ctx moved into a spawned task publishes after the call ended: the
/// consequence names the handled message as its cause, with its correlation.
#[tokio::test(flavor = "current_thread")]
async fn a_ctx_moved_past_the_call_publishes_with_causation() {
    let bus = Bus::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    let _rec = bus
        .on("rec", move |_: Pong, ctx: Ctx| {
            let _ = tx.send(ctx.into_envelope());
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel();
    let _h = bus
        .on("fwd", move |p: crate::Ping, ctx: Ctx| {
            let _ = ids_tx.send((ctx.envelope().id.clone(), ctx.correlation_id().clone()));
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                ctx.publish(Pong { n: p.n }).await.unwrap();
            });
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    bus.publish(crate::Ping { n: 3 }).await.unwrap();
    let (id, corr) = tokio::time::timeout(WAIT, ids.recv())
        .await
        .unwrap()
        .unwrap();
    let pong = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong.causation_id(), Some(&id));
    assert_eq!(pong.correlation_id, corr);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pong {
    n: u64,
}
impl switchyard::Message for Pong {
    const TOPIC: &'static str = "rev3.pong";
}

/// A typed event handler that panics at its first attempt and fails at its second: each
/// attempt's Ctx shows its own attempt number, the same first delivery time, and an
/// envelope equal to what `into_envelope` gives.
#[tokio::test(flavor = "current_thread")]
async fn typed_retries_after_a_panic_show_each_attempts_bookkeeping() {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<(u32, Envelope)>>> = Arc::default();
    let s = seen.clone();
    let _h = bus
        .on("flaky", move |_: crate::Ping, ctx: Ctx| {
            let env = ctx.envelope().clone();
            assert_eq!(ctx.clone().into_envelope(), env);
            s.lock().unwrap().push((ctx.attempt(), env));
            let attempt = ctx.attempt();
            async move {
                match attempt {
                    1 => panic!("boom"),
                    2 => Err(std::io::Error::other("again")),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(crate::Ping { n: 9 }).await.unwrap();
    bus.shutdown(WAIT).await.unwrap();
    let seen = seen.lock().unwrap();
    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    let first = seen[0].1.delivery.first_delivered_at;
    assert!(first.is_some());
    for (a, env) in seen.iter() {
        assert_eq!(env.delivery.attempt, *a);
        assert_eq!(env.delivery.first_delivered_at, first);
        assert_eq!(env.id, seen[0].1.id);
    }
}
