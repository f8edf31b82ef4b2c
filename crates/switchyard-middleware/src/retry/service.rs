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
            // The failure of attempt `made` while the next waits for readiness.
            let mut last: Option<BoxError> = None;
            loop {
                if let Some(failure) = last.take() {
                    inner.ready().await?;
                    in_time(&env, made, failure)?;
                }
                made += 1;
                let mut this_try = env.clone();
                this_try.delivery.attempt = base.saturating_add(made - 1);
                let result = inner.call(this_try).await;
                match judge(&policy, result, base, made) {
                    Verdict::Done(result) => return result,
                    Verdict::Again { hint, failure } => {
                        let (delay, failure) = plan(&policy, &env, made, hint, failure)?;
                        // A retry, under the labels a metrics layer outside this one uses
                        // by default (the message's topic).
                        ::metrics::counter!(
                            names::RETRIED,
                            "topic" => env.topic.as_str().to_owned(),
                            "handler" => handler.as_deref().unwrap_or("").to_owned()
                        )
                        .increment(1);
                        back_off(&env, handler.as_deref(), made, delay, &failure).await;
                        last = Some(failure);
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

/// The wait before attempt `made + 1` of `env`, with the failure of attempt `made`; or, when
/// that attempt would start at or past the message's deadline (`delivery.deadline`, a
/// request's), the layer's final error ([`RetryError::Deadline`]): nobody waits for its
/// result, so no backoff is waited and no attempt started. A message without a deadline
/// costs one branch, and only when it is retried.
#[inline]
pub(crate) fn plan(
    policy: &RetryPolicy,
    env: &Envelope,
    made: u32,
    hint: Option<Duration>,
    failure: BoxError,
) -> Result<(Duration, BoxError), BoxError> {
    let delay = policy.next_delay(made, hint);
    match env.delivery.deadline {
        None => Ok((delay, failure)),
        Some(deadline) => match left_before(deadline, delay) {
            None => Ok((delay, failure)),
            Some(left) => Err(past_deadline(made, left, delay, failure)),
        },
    }
}

/// After the backoff and the wait for readiness, just before attempt `made + 1` starts: the
/// layer's final error when the message's deadline passed meanwhile (a circuit breaker may
/// have held the attempt), else `Ok`.
#[inline]
pub(crate) fn in_time(env: &Envelope, made: u32, failure: BoxError) -> Result<(), BoxError> {
    match env.delivery.deadline {
        None => Ok(()),
        Some(deadline) => match left_before(deadline, Duration::ZERO) {
            None => Ok(()),
            Some(left) => Err(past_deadline(made, left, Duration::ZERO, failure)),
        },
    }
}

/// What is left of `deadline` when an attempt `delay` from now would start at or past it;
/// `None` when it would start before. Read on tokio's clock (as the bus sets deadlines), so a
/// paused test clock moves it.
fn left_before(deadline: std::time::Instant, delay: Duration) -> Option<Duration> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now().into_std());
    (delay >= left).then_some(left)
}

#[cold]
fn past_deadline(made: u32, left: Duration, next: Duration, failure: BoxError) -> BoxError {
    final_error(RetryError::Deadline {
        attempts: made,
        left,
        next,
        source: failure,
    })
}

/// Logs a retry of `env` (its caller counts it), then waits `delay` (the policy's, from
/// [`plan`]) after `made` failed attempts.
pub(crate) async fn back_off(
    env: &Envelope,
    handler: Option<&str>,
    made: u32,
    delay: Duration,
    failure: &BoxError,
) {
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
