use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::{Service, ServiceExt};

use super::{Classifier, RetryError, RetryPolicy, RetryRequested};
use switchyard_core::Permanent;

/// The layer's answer is final: `Permanent` tells the bus not to attempt the message again.
fn final_error(err: RetryError) -> BoxError {
    Box::new(Permanent::new(err))
}
use crate::metrics::names;

/// Calls the inner service again on retryable failures, waiting per its [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    handler: Option<SmolStr>,
}

impl<S> Retry<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: RetryPolicy, handler: Option<SmolStr>) -> Self {
        Self {
            inner,
            policy: Arc::new(policy),
            handler,
        }
    }
}

impl<S> Service<Envelope> for Retry<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut env: Envelope) -> Self::Future {
        // The service that was polled ready makes the first attempt; later attempts wait for
        // readiness again (a circuit breaker below may pause them).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            let base = env.delivery.attempt.max(1);
            if env.delivery.first_delivered_at.is_none() {
                env.delivery.first_delivered_at = Some(SystemTime::now());
            }
            let mut made: u32 = 0;
            loop {
                if made > 0 {
                    inner.ready().await?;
                }
                made += 1;
                let mut this_try = env.clone();
                this_try.delivery.attempt = base.saturating_add(made - 1);
                let result = inner.call(this_try).await;
                match judge(&policy, result, base, made) {
                    Verdict::Done(result) => return result,
                    Verdict::Again { hint, failure } => {
                        // A retry, under the labels a metrics layer outside this one uses
                        // by default (the message's topic).
                        ::metrics::counter!(
                            names::RETRIED,
                            "topic" => env.topic.as_str().to_owned(),
                            "handler" => handler.as_deref().unwrap_or("").to_owned()
                        )
                        .increment(1);
                        back_off(&policy, &env, handler.as_deref(), made, hint, &failure).await;
                    }
                }
            }
        })
    }
}

/// What the retry policy makes of one attempt's result.
pub(crate) enum Verdict {
    /// The message's final result (success, a permanent failure, or attempts exhausted).
    Done(Result<Outcome, BoxError>),
    /// Try again after backing off.
    Again {
        /// The handler's own `Retry { after }` delay.
        hint: Option<Duration>,
        /// Why this attempt failed.
        failure: BoxError,
    },
}

/// Judges the result of attempt number `made` (counted from 1 within this call) of a message
/// whose delivery attempt was `base` when the call started.
#[inline]
pub(crate) fn judge(
    policy: &RetryPolicy,
    result: Result<Outcome, BoxError>,
    base: u32,
    made: u32,
) -> Verdict {
    let (hint, failure): (_, BoxError) = match result {
        Ok(Outcome::Retry { after }) => (after, Box::new(RetryRequested)),
        Ok(done) => return Verdict::Done(Ok(done)),
        Err(e) => {
            if !policy.is_retryable(&*e, &Classifier::default()) {
                let attempt = base.saturating_add(made - 1);
                return Verdict::Done(Err(final_error(RetryError::Permanent {
                    attempt,
                    source: e,
                })));
            }
            (None, e)
        }
    };
    if made >= policy.get_max_attempts() {
        return Verdict::Done(Err(final_error(RetryError::Exhausted {
            attempts: made,
            source: failure,
        })));
    }
    Verdict::Again { hint, failure }
}

/// Logs a retry of `env` (its caller counts it), then waits the policy's delay after `made` failed
/// attempts.
pub(crate) async fn back_off(
    policy: &RetryPolicy,
    env: &Envelope,
    handler: Option<&str>,
    made: u32,
    hint: Option<Duration>,
    failure: &BoxError,
) {
    let delay = policy.next_delay(made, hint);
    ::tracing::debug!(
        message_id = %env.id,
        handler = handler.unwrap_or(""),
        attempt = env.delivery.attempt.max(1).saturating_add(made - 1),
        delay_ms = delay.as_millis() as u64,
        error = %failure,
        "retrying"
    );
    tokio::time::sleep(delay).await;
}
