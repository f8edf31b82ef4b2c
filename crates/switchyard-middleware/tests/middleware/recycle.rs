//! `Resilient::recycle`: the handler's future of a call that ended with its first attempt goes
//! back to the handler (the bus reuses its box); a future the stack dropped (a timeout, a
//! retry) does not, and a call that ended answers an error if polled again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard_core::{BoxError, Envelope, Outcome};
use switchyard_middleware::resilience::{Recycle, ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::RetryPolicy;
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

/// What a call of [`Handler`] does.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Ack,
    /// Fails its first call (a transient error), acks the next ones.
    FailFirst,
    /// Never ends.
    Hang,
}

/// A handler whose futures are numbered and say when they are dropped; the ones given back
/// ([`Recycle`]) are listed by number.
#[derive(Clone)]
struct Handler {
    mode: Mode,
    made: Arc<AtomicU64>,
    dropped: Arc<AtomicUsize>,
    back: Arc<Mutex<Vec<u64>>>,
}

impl Handler {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            made: Arc::default(),
            dropped: Arc::default(),
            back: Arc::default(),
        }
    }

    fn given_back(&self) -> Vec<u64> {
        self.back.lock().unwrap().clone()
    }
}

struct Call {
    id: u64,
    result: Option<Result<Outcome, BoxError>>,
    dropped: Arc<AtomicUsize>,
}

impl Future for Call {
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut().result.take() {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Service<Envelope> for Handler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = Call;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _env: Envelope) -> Call {
        let id = self.made.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match self.mode {
            Mode::Ack => Some(Ok(Outcome::Ack)),
            Mode::FailFirst if id == 1 => Some(Err("transient".into())),
            Mode::FailFirst => Some(Ok(Outcome::Ack)),
            Mode::Hang => None,
        };
        Call {
            id,
            result,
            dropped: self.dropped.clone(),
        }
    }
}

impl Recycle for Handler {
    fn recycle(&mut self, ended: Call) {
        self.back.lock().unwrap().push(ended.id);
    }
}

fn stack(
    handler: &Handler,
    config: ResilienceConfig,
) -> switchyard_middleware::resilience::ResilientService<Handler> {
    ResilienceLayer::new("recycled", config).layer(handler.clone())
}

#[tokio::test(start_paused = true)]
async fn a_call_that_ended_gives_its_handler_future_back() {
    let handler = Handler::new(Mode::Ack);
    let mut svc = stack(&handler, ResilienceConfig::default());
    for round in 1..=3u64 {
        svc.ready().await.unwrap();
        let mut fut = Box::pin(svc.call(env("t.recycle")));
        assert!(matches!(fut.as_mut().await, Ok(Outcome::Ack)));
        // Ended: polled again it answers an error, and does not poll the handler's future.
        assert!(fut.as_mut().await.is_err());
        // The handler's future is kept until it is given back.
        assert_eq!(handler.dropped.load(Ordering::SeqCst), round as usize - 1);
        svc.recycle(fut.as_mut());
        assert_eq!(handler.given_back(), (1..=round).collect::<Vec<_>>());
        // Given back once only.
        svc.recycle(fut.as_mut());
        assert_eq!(handler.given_back().len(), round as usize);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_drops_its_handler_future_and_gives_nothing_back() {
    let handler = Handler::new(Mode::Hang);
    let config = ResilienceConfig::default()
        .retry(RetryPolicy::default().max_attempts(1))
        .timeout(Duration::from_millis(50));
    let mut svc = stack(&handler, config);
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call(env("t.recycle")));
    assert!(fut.as_mut().await.is_err());
    // Dropped at the timeout (its late result must not count), not kept for recycling.
    assert_eq!(handler.dropped.load(Ordering::SeqCst), 1);
    svc.recycle(fut.as_mut());
    assert!(handler.given_back().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_retried_call_gives_nothing_back() {
    let handler = Handler::new(Mode::FailFirst);
    // The backoff passes on the paused clock.
    let config = ResilienceConfig::default().retry(RetryPolicy::default().max_attempts(3));
    let mut svc = stack(&handler, config);
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call(env("t.recycle")));
    assert!(matches!(fut.as_mut().await, Ok(Outcome::Ack)));
    assert_eq!(handler.made.load(Ordering::SeqCst), 2);
    // The first attempt's future was dropped when the retry began; the retry ran on a clone
    // of the handler, in a future of its own.
    svc.recycle(fut.as_mut());
    assert!(handler.given_back().is_empty());
}

/// `Resilient::call_lent`: the call holds no reference to the stack's shared state; polled
/// with `poll_lent` it runs as a call does and is given back as one; polled on its own it
/// answers an error instead of running.
#[tokio::test(start_paused = true)]
async fn a_lent_call_runs_with_its_service_and_not_alone() {
    let handler = Handler::new(Mode::Ack);
    let layer = ResilienceLayer::new("recycled", ResilienceConfig::default());
    let mut svc = layer.layer(handler.clone());
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call_lent(env("t.recycle")));
    let result = std::future::poll_fn(|cx| svc.poll_lent(fut.as_mut(), cx)).await;
    assert!(matches!(result, Ok(Outcome::Ack)));
    svc.recycle(fut.as_mut());
    assert_eq!(handler.given_back(), vec![1]);
    let stats = layer.metrics().snapshot();
    let row = stats
        .get("t.recycle", "recycled")
        .expect("a row for the call");
    assert_eq!((row.acked, row.in_flight), (1, 0));

    svc.ready().await.unwrap();
    let mut alone = Box::pin(svc.call_lent(env("t.recycle")));
    let err = alone.as_mut().await.expect_err("a lent call polled alone");
    assert!(err.to_string().contains("without its service"), "{err}");
    // Its handler was called but its future not polled; given back unfinished, the call
    // leaves the in-flight figures.
    svc.recycle(alone.as_mut());
    drop(alone);
    let row = layer.metrics().snapshot();
    let row = row.get("t.recycle", "recycled").unwrap();
    assert_eq!((row.acked, row.in_flight), (1, 0));
}

/// A lent call given its own reference (`Resilient::own`) runs alone, and dropped unfinished
/// leaves the in-flight figures as any call does.
#[tokio::test(start_paused = true)]
async fn a_lent_call_made_its_own_runs_alone() {
    let handler = Handler::new(Mode::Ack);
    let layer = ResilienceLayer::new("recycled", ResilienceConfig::default());
    let mut svc = layer.layer(handler.clone());
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call_lent(env("t.recycle")));
    svc.own(fut.as_mut());
    assert!(matches!(fut.as_mut().await, Ok(Outcome::Ack)));

    let hanging = Handler::new(Mode::Hang);
    let layer = ResilienceLayer::new("hangs", ResilienceConfig::default());
    let mut svc = layer.layer(hanging.clone());
    svc.ready().await.unwrap();
    let mut fut = Box::pin(svc.call_lent(env("t.recycle")));
    svc.own(fut.as_mut());
    let waker = std::task::Waker::noop();
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    );
    assert_eq!(
        layer
            .metrics()
            .snapshot()
            .get("t.recycle", "hangs")
            .unwrap()
            .in_flight,
        1
    );
    drop(fut);
    assert_eq!(
        layer
            .metrics()
            .snapshot()
            .get("t.recycle", "hangs")
            .unwrap()
            .in_flight,
        0
    );
}
