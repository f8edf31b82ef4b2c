//! The message a handler is being called with, as the bus delivered it.
//!
//! While the bus calls a handler (and polls its future), it makes the envelope it delivered
//! available here as a shared pointer. The bus uses it to record a handler's publishes as
//! consequences of that message; middleware may use it to keep the delivered message without
//! copying it (the resilience stack keeps it for retries this way).
//!
//! The envelope is the one queued, before the bus stamps the delivery bookkeeping
//! ([`Envelope::delivery`]) on the copy it hands the handler: compare with
//! [`Envelope::same_message`], and take the delivery fields from the handler's copy (a typed
//! handler nothing wraps gets no copy: its `Ctx` has them, `attempt()` or
//! `envelope().delivery`).
//!
//! Like a task-local, without a runtime: a thread-local swapped in around every poll of the
//! scoped future (and back out after it, also when the poll panics).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::Envelope;

thread_local! {
    static DELIVERED: RefCell<Option<Arc<Envelope>>> = const { RefCell::new(None) };
    /// The attempts a layer inside the handler made of a delivered message, noted at the end
    /// of its call ([`note_attempts`]) for the bus to take ([`take_noted_attempts`]).
    static NOTED: RefCell<Option<(crate::MessageId, u32)>> = const { RefCell::new(None) };
    /// Whether `NOTED` may hold a note: read first, so that taking nothing (every call of a
    /// handler that makes no attempts of its own) costs one load.
    static ANY_NOTED: Cell<bool> = const { Cell::new(false) };
}

/// For a layer inside a handler that makes attempts of its own (a retry layer): notes, as
/// the call ends, that the delivered message took `attempts` attempts (the number of the
/// last one), so that the bus reports that number (a command's `CommandResult::attempts`)
/// rather than its single call of the handler. Does nothing outside a delivered scope.
/// Noted on the thread that polls the call to its end, where the bus takes it right after.
pub fn note_attempts(attempts: u32) {
    if let Some(id) = with(|env| env.id.clone()) {
        let _ = NOTED.try_with(|n| {
            if let Ok(mut n) = n.try_borrow_mut() {
                *n = Some((id, attempts));
                ANY_NOTED.set(true);
            }
        });
    }
}

/// Takes what [`note_attempts`] noted for the message `id` during the call that just ended on
/// this thread, if anything.
#[inline]
pub fn take_noted_attempts(id: &crate::MessageId) -> Option<u32> {
    if !ANY_NOTED.get() {
        return None;
    }
    take_noted_slow(id)
}

#[cold]
#[inline(never)]
fn take_noted_slow(id: &crate::MessageId) -> Option<u32> {
    NOTED
        .try_with(|n| {
            let mut n = n.try_borrow_mut().ok()?;
            match &*n {
                Some((noted, _)) if noted == id => {
                    ANY_NOTED.set(false);
                    n.take().map(|(_, attempts)| attempts)
                }
                _ => None,
            }
        })
        .ok()
        .flatten()
}

/// Runs `fut` with `env` as the delivered message: [`with`] and [`current`] see it while
/// `fut` is polled (and only then).
pub fn scope<F: Future>(env: Arc<Envelope>, fut: F) -> Scope<F> {
    Scope {
        env: Some(env),
        fut,
    }
}

/// Calls `f` with `env` as the delivered message: [`with`] and [`current`] see it during the
/// call (and only then), as they do while a [`scope`]'s future is polled. For a caller that
/// polls a handler's future once itself, without a future around it.
pub fn within<R>(env: Arc<Envelope>, f: impl FnOnce() -> R) -> R {
    let mut slot = Some(env);
    let _entered = Entered::new(&mut slot);
    f()
}

pin_project! {
    /// A future run with a delivered message ([`scope`]).
    #[derive(Debug)]
    pub struct Scope<F> {
        env: Option<Arc<Envelope>>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Scope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::new(this.env);
        this.fut.poll(cx)
    }
}

/// The scope's envelope swapped into the thread-local, swapped back out on drop (the outer
/// scope's, if any, is back then).
struct Entered<'a> {
    slot: &'a mut Option<Arc<Envelope>>,
    swapped: bool,
}

impl<'a> Entered<'a> {
    #[inline]
    fn new(slot: &'a mut Option<Arc<Envelope>>) -> Self {
        let swapped = swap(slot);
        Self { slot, swapped }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.swapped {
            swap(self.slot);
        }
    }
}

/// Swaps `slot` with the thread-local; `false` when it could not (the thread is ending, or
/// inside [`with`], which never polls a scope).
#[inline]
fn swap(slot: &mut Option<Arc<Envelope>>) -> bool {
    DELIVERED
        .try_with(|d| match d.try_borrow_mut() {
            Ok(mut d) => {
                std::mem::swap(&mut *d, slot);
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// Calls `f` with the delivered message, if the current task is handling one.
#[inline]
pub fn with<R>(f: impl FnOnce(&Arc<Envelope>) -> R) -> Option<R> {
    DELIVERED
        .try_with(|d| d.try_borrow().ok()?.as_ref().map(f))
        .ok()
        .flatten()
}

/// The delivered message, if the current task is handling one.
pub fn current() -> Option<Arc<Envelope>> {
    with(Arc::clone)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Topic;

    fn env(p: &str) -> Arc<Envelope> {
        Arc::new(Envelope::new(Topic::new("a.b").unwrap(), p.to_owned()))
    }

    #[test]
    fn attempts_noted_in_a_scope_are_taken_once_for_that_message_only() {
        let (a, b) = (env("a"), env("b"));
        let (ida, idb) = (a.id.clone(), b.id.clone());
        note_attempts(5);
        assert_eq!(
            take_noted_attempts(&ida),
            None,
            "outside a scope nothing is noted"
        );
        within(a, || note_attempts(3));
        assert_eq!(take_noted_attempts(&idb), None, "another message's note");
        assert_eq!(take_noted_attempts(&ida), Some(3));
        assert_eq!(take_noted_attempts(&ida), None, "taken once");
    }

    #[test]
    fn within_sets_it_for_the_call_only_and_restores_the_outer_one() {
        let (outer, inner) = (env("outer"), env("inner"));
        let (o, i) = (outer.id.clone(), inner.id.clone());
        let (nested, after) = within(outer, || {
            let nested = within(inner, || current().map(|e| e.id.clone()));
            (nested, current().map(|e| e.id.clone()))
        });
        assert_eq!((nested, after), (Some(i), Some(o)));
        assert!(current().is_none(), "nothing outside the call");
    }

    #[test]
    fn set_only_while_polled_and_nested_scopes_restore_the_outer_one() {
        let outer = env("outer");
        let inner = env("inner");
        let (o, i) = (outer.id.clone(), inner.id.clone());
        let fut = scope(outer, async move {
            let before = current().map(|e| e.id.clone());
            let nested = scope(inner, async { current().map(|e| e.id.clone()) }).await;
            let after = current().map(|e| e.id.clone());
            (before, nested, after)
        });
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready((before, nested, after)) = fut.as_mut().poll(&mut cx) else {
            panic!("ready at once");
        };
        assert_eq!(before, Some(o.clone()));
        assert_eq!(nested, Some(i));
        assert_eq!(after, Some(o));
        assert!(current().is_none(), "nothing outside the scope");
    }
}
