//! Review rev4: the resilience stack's recycle hook under the bus. A handler's future
//! holding a resource (a live count) is released once its call ended: after an ack, a
//! failure, a retry, a timeout, a shutdown; a future whose `Drop` panics does not stop the
//! subscription.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard::{BoxError, Bus, Envelope, Outcome, Topic, boxed};
use switchyard_middleware::resilience::ResilienceConfig;
use switchyard_middleware::retry::RetryPolicy;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ack,
    Fail,
    Hang,
    /// Acks, and its `Drop` panics.
    AckThenDropPanics,
}

struct Guarded {
    mode: Mode,
    live: Arc<AtomicUsize>,
}

impl Future for Guarded {
    type Output = Result<Outcome, BoxError>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.mode {
            Mode::Ack | Mode::AckThenDropPanics => Poll::Ready(Ok(Outcome::Ack)),
            Mode::Fail => Poll::Ready(Err("backend down".into())),
            Mode::Hang => Poll::Pending,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        if self.mode == Mode::AckThenDropPanics && !std::thread::panicking() {
            panic!("the handler's future panics in Drop");
        }
    }
}

/// A handler whose payload names the mode of its call's future.
fn handler(live: Arc<AtomicUsize>, calls: Arc<AtomicUsize>) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        live.fetch_add(1, Ordering::SeqCst);
        let mode = match &e.payload[..] {
            b"fail" => Mode::Fail,
            b"hang" => Mode::Hang,
            b"drop-panics" => Mode::AckThenDropPanics,
            _ => Mode::Ack,
        };
        Guarded {
            mode,
            live: live.clone(),
        }
    }))
}

fn msg(payload: &'static str) -> Envelope {
    Envelope::new(Topic::new("rows.x").unwrap(), payload)
}

async fn run(config: ResilienceConfig, payloads: &[&'static str]) -> (Bus, usize, usize) {
    let bus = Bus::builder()
        .with_resilience(move || config.clone())
        .build()
        .unwrap();
    let (live, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sub = bus
        .subscribe("rows", "rows.#", handler(live.clone(), calls.clone()))
        .start()
        .await
        .unwrap();
    for p in payloads {
        bus.publish_envelope(msg(p)).await.unwrap();
        bus.run_until_idle().await;
    }
    drop(sub);
    (
        bus,
        live.load(Ordering::SeqCst),
        calls.load(Ordering::SeqCst),
    )
}

fn limited() -> ResilienceConfig {
    ResilienceConfig::default()
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(5)),
        )
        .timeout(Duration::from_millis(50))
        .concurrency(1)
        .rate(1000, Duration::from_secs(1), 10)
}

#[tokio::test(start_paused = true)]
async fn a_handler_future_is_released_once_its_call_ended() {
    let (bus, live, calls) = run(limited(), &["ok", "fail", "hang", "ok"]).await;
    assert_eq!(
        live, 0,
        "every handler future was dropped once its call ended"
    );
    assert_eq!(calls, 1 + 2 + 2 + 1);
    assert_eq!(bus.dead_letters().unwrap().len(), 2, "fail and hang");
}

#[tokio::test(start_paused = true)]
async fn a_handler_future_whose_drop_panics_does_not_stop_the_subscription() {
    let (bus, live, calls) = run(limited(), &["drop-panics", "ok", "fail", "ok"]).await;
    assert_eq!(live, 0);
    assert_eq!(
        calls,
        1 + 1 + 2 + 1,
        "the subscription went on after the panic"
    );
    let letters = bus.dead_letters().unwrap().list();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| &l.envelope.payload[..]).collect();
    assert!(payloads.contains(&&b"fail"[..]), "{payloads:?}");
}

/// A call that never ends, no timeout configured: the bus's shutdown past its deadline drops
/// the handler's future (nothing keeps it for a recycle that never comes).
#[tokio::test(start_paused = true)]
async fn a_hanging_handler_future_is_released_by_the_shutdown() {
    let bus = Bus::builder()
        .with_resilience(|| ResilienceConfig::default().concurrency(1))
        .build()
        .unwrap();
    let (live, calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let _sub = bus
        .subscribe("rows", "rows.#", handler(live.clone(), calls.clone()))
        .start()
        .await
        .unwrap();
    bus.publish_envelope(msg("hang")).await.unwrap();
    for _ in 0..100_000 {
        if calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never called");
    assert_eq!(live.load(Ordering::SeqCst), 1);
    let _ = bus.shutdown(Duration::from_millis(100)).await;
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the hanging future was dropped"
    );
}
