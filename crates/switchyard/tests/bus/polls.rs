//! How the workers poll a handler's future (issue 18's worker fast path): once per wake, so
//! a handler that yields lets other tasks run, and a failing typed handler still leaves a
//! dead letter with the message's bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard::{BoxError, Bus, Envelope, Message, Outcome};

use crate::{Ping, WAIT};

fn bus(max_attempts: u32) -> Bus {
    Bus::builder()
        .max_attempts(max_attempts)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap()
}

/// A handler that yields (tokio::task::yield_now) lets other tasks run before it goes on.
#[tokio::test]
async fn a_handler_that_yields_lets_other_tasks_run() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let _sub = bus
        .on("yielder", move |_p: Ping, _ctx| {
            let s2 = s2.clone();
            async move {
                let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let f = flag.clone();
                tokio::spawn(async move { f.store(true, Ordering::SeqCst) });
                tokio::task::yield_now().await;
                s2.lock().unwrap().push(flag.load(Ordering::SeqCst));
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [true],
        "the spawned task ran while the handler yielded"
    );
}

/// A future that waits for a timer: how many times the worker polls it.
#[tokio::test(start_paused = true)]
async fn a_waiting_handler_is_polled_once_per_wake() {
    struct Counted {
        polls: Arc<AtomicU32>,
        sleep: Pin<Box<tokio::time::Sleep>>,
    }
    impl Future for Counted {
        type Output = Result<Outcome, BoxError>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            std::task::ready!(self.sleep.as_mut().poll(cx));
            Poll::Ready(Ok(Outcome::Ack))
        }
    }
    let bus = Bus::new();
    let polls = Arc::new(AtomicU32::new(0));
    let p = polls.clone();
    let _sub = bus
        .subscribe(
            "sleeper",
            Ping::TOPIC,
            switchyard::boxed(tower::service_fn(move |_env: Envelope| Counted {
                polls: p.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::from_millis(10))),
            })),
        )
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(
        polls.load(Ordering::SeqCst),
        2,
        "one poll before the timer fires, one after"
    );
}

/// A typed publish carried unencoded, failed by its typed handler: dead-lettered with bytes.
#[tokio::test]
async fn an_unencoded_event_failing_in_a_typed_handler_is_dead_lettered_with_bytes() {
    let bus = bus(2);
    let _sub = bus
        .on("typed-fail", |p: Ping, _ctx| async move {
            if p.n == 1 {
                panic!("typed panic");
            }
            Err::<(), _>(std::io::Error::other("typed error"))
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.publish(Ping { n: 2 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 2);
    for l in &letters {
        assert!(!l.envelope.needs_encoding());
        let p: Ping = serde_json::from_slice(&l.envelope.payload).unwrap();
        assert!(p.n == 1 || p.n == 2);
        assert_eq!(l.attempts, 2);
    }
}

/// A future whose `Drop` panics (after it returned `Ready`).
struct DropPanics(bool);

impl Future for DropPanics {
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(Outcome::Ack))
    }
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        if self.0 && !std::thread::panicking() {
            panic!("drop panics");
        }
    }
}

/// A panic in a handler future's `Drop` does not kill its worker: the messages behind it are
/// handled and the bus goes idle (it hung with `pending` stuck before).
#[tokio::test]
async fn a_future_whose_drop_panics_does_not_kill_its_worker() {
    let bus = bus(1);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sub = bus
        .subscribe(
            "drop-panic",
            Ping::TOPIC,
            switchyard::boxed(tower::service_fn(move |_env: Envelope| {
                // The second call's future panics when dropped.
                DropPanics(c.fetch_add(1, Ordering::SeqCst) == 1)
            })),
        )
        .workers(1)
        .start()
        .await
        .unwrap();
    for n in 1..=3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("the worker handled the messages behind the panicking drop");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(sub.stats().acked, 3);
    assert_eq!(bus.pending(), 0);
    bus.shutdown(WAIT).await.unwrap();
}
