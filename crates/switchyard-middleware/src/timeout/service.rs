use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;

use super::TimeoutError;

/// Fails a call with [`TimeoutError`] when the inner service takes longer than the limit.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a limit of `timeout` per call.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<S> Service<Envelope> for Timeout<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        TimeoutFuture {
            inner: tokio::time::timeout(self.timeout, self.inner.call(env)),
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The future returned by [`Timeout`]: the inner call, or [`TimeoutError`] when time is up
    /// (the inner future is then dropped with this one, so a late result is never observed).
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        timeout: Duration,
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Outcome, BoxError>>,
{
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(TimeoutError {
                timeout: *this.timeout,
            }
            .into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use switchyard_core::Topic;
    use tower::ServiceExt;

    use super::*;

    fn env() -> Envelope {
        Envelope::new(Topic::new("t.x").unwrap(), "x")
    }

    #[tokio::test(start_paused = true)]
    async fn late_result_is_discarded() {
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let handler = tower::service_fn(move |_e: Envelope| {
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                f.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(Outcome::Ack)
            }
        });
        let start = tokio::time::Instant::now();
        let err = Timeout::new(handler, Duration::from_secs(1))
            .oneshot(env())
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let err = err.downcast::<TimeoutError>().unwrap();
        assert_eq!(err.timeout, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "inner future kept running"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fast_call_passes_through() {
        let handler = tower::service_fn(|_e: Envelope| async move {
            tokio::time::sleep(Duration::from_millis(999)).await;
            Ok::<_, BoxError>(Outcome::reject("no"))
        });
        let out = Timeout::new(handler, Duration::from_secs(1))
            .oneshot(env())
            .await
            .unwrap();
        assert_eq!(out, Outcome::reject("no"));
    }
}
