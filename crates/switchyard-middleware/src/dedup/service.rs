use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smol_str::SmolStr;
use switchyard_core::{BoxError, Envelope, Outcome};
use tower::Service;

use super::KeyFn;
use super::store::{Check, Store};
use super::{DedupHandle, DedupKey};
use crate::metrics::names;

/// Acks duplicates without calling the inner service.
pub struct Dedup<S> {
    inner: S,
    key: KeyFn,
    store: Arc<Store>,
    handler: SmolStr,
}

impl<S: Clone> Clone for Dedup<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            store: self.store.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedup<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S> Dedup<S> {
    pub(crate) fn new(inner: S, key: KeyFn, store: Arc<Store>, handler: SmolStr) -> Self {
        Self {
            inner,
            key,
            store,
            handler,
        }
    }

    /// A handle to the key store.
    pub fn handle(&self) -> DedupHandle {
        DedupHandle::new(self.store.clone())
    }
}

/// Forgets an in-flight key if the call is dropped before it ends.
pub(crate) struct InFlight {
    store: Arc<Store>,
    key: Option<DedupKey>,
}

impl InFlight {
    /// Marks the key handled (`success`) or forgets it so a redelivery runs again.
    pub(crate) fn finish(mut self, success: bool) {
        if let Some(key) = self.key.take() {
            self.store.finish(&key, success);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.store.finish(&key, false);
        }
    }
}

/// What a look at the store found.
pub(crate) enum TryClaim {
    /// First copy: the key is now in flight, held by this claim.
    Claimed(InFlight),
    /// Already handled (counted and logged): ack it without calling the handler.
    Duplicate,
    /// Another call with the same key is running.
    Busy,
}

/// Looks `key` up once, without waiting.
pub(crate) fn try_claim(
    store: &Arc<Store>,
    key: &DedupKey,
    env: &Envelope,
    handler: &str,
) -> TryClaim {
    match store.check(key) {
        Check::Proceed => TryClaim::Claimed(InFlight {
            store: store.clone(),
            key: Some(key.clone()),
        }),
        Check::Duplicate => {
            ::metrics::counter!(names::DUPLICATES, "handler" => handler.to_owned()).increment(1);
            ::tracing::debug!(message_id = %env.id, ?key, "duplicate acked");
            TryClaim::Duplicate
        }
        Check::Wait => TryClaim::Busy,
    }
}

/// Checks `key` against the store: `None` for a duplicate (counted and logged; ack it
/// without calling the handler), otherwise the in-flight claim on the key. Waits while
/// another call with the same key is running.
pub(crate) async fn claim(
    store: Arc<Store>,
    key: DedupKey,
    env: &Envelope,
    handler: &str,
) -> Option<InFlight> {
    loop {
        // Created before the check, so an attempt ending in between still wakes it.
        let ended = store.notified();
        match try_claim(&store, &key, env, handler) {
            TryClaim::Claimed(claim) => return Some(claim),
            TryClaim::Duplicate => return None,
            TryClaim::Busy => ended.await,
        }
    }
}

/// True for the results that mark a dedup key as handled.
pub(crate) fn handled(result: &Result<Outcome, BoxError>) -> bool {
    matches!(result, Ok(Outcome::Ack | Outcome::Reply(_)))
}

impl<S> Service<Envelope> for Dedup<S>
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

    fn call(&mut self, env: Envelope) -> Self::Future {
        let Some(key) = (self.key)(&env) else {
            return Box::pin(self.inner.call(env));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        let handler = self.handler.clone();
        Box::pin(async move {
            let Some(guard) = claim(store, key, &env, &handler).await else {
                return Ok(Outcome::Ack);
            };
            let result = inner.call(env).await;
            guard.finish(handled(&result));
            result
        })
    }
}
