//! The message a handler is being called with, as the bus delivered it.
//!
//! While the bus calls a handler (and polls its future), it makes the envelope it delivered
//! available here as a shared pointer. The bus uses it to record a handler's publishes as
//! consequences of that message; middleware may use it to keep the delivered message without
//! copying it (the resilience stack keeps it for retries this way).
//!
//! The envelope is the one queued, before the bus stamps the delivery bookkeeping
//! ([`Envelope::delivery`]) on the copy it hands the handler: compare with
//! [`Envelope::same_message`], and take the delivery fields from the handler's copy.

use std::future::Future;
use std::sync::Arc;

use crate::Envelope;

tokio::task_local! {
    static DELIVERED: Arc<Envelope>;
}

/// Runs `fut` with `env` as the delivered message: [`with`] and [`current`] see it while
/// `fut` is polled (and only then).
pub fn scope<F: Future>(env: Arc<Envelope>, fut: F) -> impl Future<Output = F::Output> {
    DELIVERED.scope(env, fut)
}

/// Calls `f` with the delivered message, if the current task is handling one.
pub fn with<R>(f: impl FnOnce(&Arc<Envelope>) -> R) -> Option<R> {
    DELIVERED.try_with(f).ok()
}

/// The delivered message, if the current task is handling one.
pub fn current() -> Option<Arc<Envelope>> {
    with(Arc::clone)
}
