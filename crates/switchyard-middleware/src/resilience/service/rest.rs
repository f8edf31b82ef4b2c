//! Attempts after the first: back off, wait for the breaker's and the limits' leave, call
//! the handler under its timeout and panic capture, judge the result, until one attempt ends
//! it. The stack's future turns into this when its first attempt asks for another.

use std::sync::Arc;
use std::time::Duration;

use quanta::Instant;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;

use super::Core;
use crate::breaker::{Admitted, BreakerOpenError, Gate};
use crate::catch_panic::CatchPanic;
use crate::metrics::TopicHandles;
use crate::retry::{Verdict, back_off, in_time, judge, plan};
use crate::timeout::Timeout;

/// Makes attempts `made + 1 ..` of `env` until one succeeds, fails permanently or the policy's
/// attempts run out. `last` is the failure of attempt `made`, to back off from first. `first`
/// is an admission the caller already holds for the next attempt (its service polled ready).
/// Each re-attempt is counted as a retry in `retries` (the call's metric handles) and told to
/// the config's `on_retry`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn attempts<S>(
    core: Arc<Core<S>>,
    mut service: S,
    mut gate: Gate,
    mut first: Option<Result<Admitted, BreakerOpenError>>,
    env: Envelope,
    base: u32,
    mut made: u32,
    mut last: Option<(Option<Duration>, BoxError)>,
    retries: Option<Arc<TopicHandles>>,
) -> Result<Outcome, BoxError>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Send,
    S::Future: Send + 'static,
{
    loop {
        // The failure of attempt `made`, kept until the next starts (the deadline is checked
        // again then).
        let mut prev = None;
        if let Some((hint, failure)) = last.take() {
            // Past the message's deadline: given up, neither counted nor told as a retry.
            let (delay, failure) = plan(&core.policy, &env, made, hint, failure)?;
            if let Some(handles) = &retries {
                handles.reattempted();
            }
            if let Some(on_retry) = &core.on_retry {
                (on_retry.0)(&env);
            }
            back_off(&env, Some(&core.handler), made, delay, &failure).await;
            prev = Some(failure);
        }
        let admitted = match first.take() {
            Some(admitted) => admitted,
            None => {
                std::future::poll_fn(|cx| {
                    std::task::ready!(gate.poll_admit(cx));
                    service.poll_ready(cx)
                })
                .await?;
                // Before the admission is taken: a breaker's probe is not spent on it.
                if let Some(failure) = prev {
                    in_time(&env, made, failure)?;
                }
                gate.take()
            }
        };
        made += 1;
        let mut this_try = env.clone();
        this_try.delivery.attempt = base.saturating_add(made - 1);
        let result = match admitted {
            Ok(admitted) => {
                let result = Timeout::new(CatchPanic::new(&mut service), core.timeout)
                    .call(this_try)
                    .await;
                admitted.settle(&core.breaker, &result, Instant::now());
                result
            }
            Err(refused) => Err(refused.into()),
        };
        match judge(&core.policy, result, base, made) {
            Verdict::Done(result) => {
                // Later than the first: the bus reports the attempts it took (a command's
                // `CommandResult::attempts`), as when it makes the retries itself. A failure
                // says so in its `RetryError` already.
                if made > 1 && result.is_ok() {
                    switchyard_core::delivered::note_attempts(base.saturating_add(made - 1));
                }
                return result;
            }
            Verdict::Again { hint, failure } => last = Some((hint, failure)),
        }
    }
}
