//! A typed message shared by the handlers of one publish, instead of one copy per handler.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::local::{Encoding, Local, Value};
use crate::message::Message;

/// A message shared, not copied: a reference-counted, immutable `M` that derefs to `M`.
///
/// A typed handler that takes `Shared<M>` instead of `M` (`bus.on(name, |t: Shared<Tick>,
/// ctx| ...)`) gets the value the publisher made in this process without a clone of it: every
/// subscriber of a fan-out, and every retry of each, holds the one allocation the publish made
/// (a reference count more per delivery, where a handler taking `M` gets a clone: for a
/// struct with a `String`, an allocation and a copy each). The value cannot be changed through
/// it, so each handler, and each attempt, sees it as published.
///
/// A message without a value from this process (it came from a transport, was published
/// as an envelope, or a layer rewrote its payload) is decoded once for the delivery into a new
/// `Shared`; a payload that does not decode goes to the dead-letter sink with its raw bytes,
/// exactly as for a handler taking `M`.
///
/// Cloning a `Shared` adds a reference; [`try_unwrap`](Self::try_unwrap),
/// [`into_inner`](Self::into_inner) and [`unwrap_or_clone`](Self::unwrap_or_clone) give the
/// last holder the value itself. Like `Arc`, its own functions are associated functions
/// (`Shared::ptr_eq(&a, &b)`), so they never hide a method of `M`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::{Message, Shared};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Tick { seq: u64, body: String }
/// impl Message for Tick { const TOPIC: &'static str = "ticks"; }
///
/// let tick = Shared::new(Tick { seq: 1, body: "x".into() });
/// let other = tick.clone(); // one more reference, no copy of the `Tick`
/// assert!(Shared::ptr_eq(&tick, &other));
/// assert_eq!(tick.body, "x"); // derefs to the `Tick`
/// let tick = Shared::try_unwrap(tick).unwrap_err(); // `other` holds it too
/// drop(other);
/// assert_eq!(Shared::into_inner(tick).map(|t| t.seq), Some(1)); // the last holder's
/// ```
pub struct Shared<M>(Arc<Value<M>>);

impl<M: Message> Shared<M> {
    /// Shares `value`.
    pub fn new(value: M) -> Self {
        // A value made on its own goes with no payload; its encoding, never asked for here,
        // would be made on demand as for a value attached unencoded.
        Self(Arc::new(Value {
            value,
            encoding: Encoding::Lazy(OnceLock::new(), M::encode),
        }))
    }
}

impl<M> Shared<M> {
    /// The value an envelope carried ([`Local::take_shared`]), the very allocation.
    pub(crate) fn from_value(value: Arc<Value<M>>) -> Self {
        Self(value)
    }

    /// Whether `this` and `other` hold the same value (the same allocation), as
    /// `Arc::ptr_eq`.
    pub fn ptr_eq(this: &Self, other: &Self) -> bool {
        Arc::ptr_eq(&this.0, &other.0)
    }

    /// The value itself if `this` is its only holder, `this` back otherwise.
    pub fn try_unwrap(this: Self) -> Result<M, Self> {
        Arc::try_unwrap(this.0).map(|v| v.value).map_err(Self)
    }

    /// The value itself if `this` is its last holder, as `Arc::into_inner`: of holders
    /// calling it at once (on different threads), exactly one gets it.
    pub fn into_inner(this: Self) -> Option<M> {
        Arc::into_inner(this.0).map(|v| v.value)
    }
}

impl<M: Clone> Shared<M> {
    /// The value itself if `this` is its only holder, a clone of it otherwise.
    pub fn unwrap_or_clone(this: Self) -> M {
        Self::try_unwrap(this).unwrap_or_else(|shared| M::clone(&shared))
    }
}

impl<M: Message> From<M> for Shared<M> {
    fn from(value: M) -> Self {
        Self::new(value)
    }
}

impl<M> Clone for Shared<M> {
    /// One more holder of the same value: a reference count, no copy of `M`.
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<M> Deref for Shared<M> {
    type Target = M;

    #[inline]
    fn deref(&self) -> &M {
        &self.0.value
    }
}

impl<M> AsRef<M> for Shared<M> {
    fn as_ref(&self) -> &M {
        self
    }
}

impl<M> Borrow<M> for Shared<M> {
    fn borrow(&self) -> &M {
        self
    }
}

impl<M: fmt::Debug> fmt::Debug for Shared<M> {
    /// As `M`'s.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        M::fmt(self, f)
    }
}

impl<M: fmt::Display> fmt::Display for Shared<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        M::fmt(self, f)
    }
}

impl<M: PartialEq> PartialEq for Shared<M> {
    /// Compares the values.
    fn eq(&self, other: &Self) -> bool {
        M::eq(self, other)
    }
}

impl<M: Eq> Eq for Shared<M> {}

impl<M: Hash> Hash for Shared<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        M::hash(self, state);
    }
}

/// What a typed handler takes as its message: the message `M` itself (its own value: a clone
/// of the published one, or that one moved out for its last holder, or a decode), or
/// [`Shared<M>`] (the published value itself, shared). Implemented for every [`Message`] and
/// every `Shared<M>`, and only for those (it is sealed): it is what lets `bus.on` take a
/// handler of either.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message a typed handler can take: it does not implement `Message`",
    label = "not a `Message`",
    note = "derive `Clone`, `Serialize` and `Deserialize` for `{Self}` and give it a topic: `impl Message for {Self} {{ const TOPIC: &'static str = \"domain.event\"; }}`",
    note = "a handler's first argument is the decoded message, its own (`M`) or shared (`Shared<M>`); for raw envelopes use `Bus::subscribe` with `handler_fn`"
)]
pub trait MessageArg: sealed::Sealed + Send + Sized + 'static {
    /// The message type (its topic, its decoding).
    type Message: Message;

    /// Takes the value published in this process from `local`, if it is there for `payload`
    /// ([`Local::take`] or [`Local::take_shared`]).
    fn take(local: &mut Local, payload: &Bytes) -> Option<Self>;

    /// The value published in this process, if it is in `local` for `payload`, leaving
    /// `local` as it is ([`Local::cloned`] or [`Local::shared`]): what [`take`](Self::take)
    /// gives from a copy of `local`.
    fn get(local: &Local, payload: &Bytes) -> Option<Self>;

    /// Wraps a message decoded from the payload.
    fn from_decoded(message: Self::Message) -> Self;
}

impl<M: Message> MessageArg for M {
    type Message = M;

    #[inline(always)]
    fn take(local: &mut Local, payload: &Bytes) -> Option<Self> {
        local.take::<M>(payload)
    }

    #[inline(always)]
    fn get(local: &Local, payload: &Bytes) -> Option<Self> {
        local.cloned::<M>(payload)
    }

    #[inline(always)]
    fn from_decoded(message: M) -> Self {
        message
    }
}

impl<M: Message> MessageArg for Shared<M> {
    type Message = M;

    #[inline(always)]
    fn take(local: &mut Local, payload: &Bytes) -> Option<Self> {
        local.take_shared::<M>(payload)
    }

    #[inline(always)]
    fn get(local: &Local, payload: &Bytes) -> Option<Self> {
        local.shared::<M>(payload)
    }

    #[inline]
    fn from_decoded(message: M) -> Self {
        Self::new(message)
    }
}

mod sealed {
    use super::Shared;
    use crate::message::Message;

    /// Keeps [`MessageArg`](super::MessageArg) to the two kinds of argument.
    pub trait Sealed {}
    impl<M: Message> Sealed for M {}
    impl<M: Message> Sealed for Shared<M> {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Clones of a `Counted` made on this thread (tests run on threads of their own).
        static CLONES: Cell<usize> = const { Cell::new(0) };
    }

    fn clones() -> usize {
        CLONES.with(Cell::get)
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Counted(String);

    impl Clone for Counted {
        fn clone(&self) -> Self {
            CLONES.with(|c| c.set(c.get() + 1));
            Self(self.0.clone())
        }
    }

    impl Message for Counted {
        const TOPIC: &'static str = "shared.counted";
    }

    #[test]
    fn every_copy_of_a_local_shares_the_value_without_a_clone() {
        let payload = Bytes::from_static(b"\"a\"");
        let local = Local::new(Counted("a".into()), &payload);
        let mut copies: Vec<Local> = (0..8).map(|_| local.clone()).collect();
        drop(local);
        let before = clones();
        let shared: Vec<Shared<Counted>> = copies
            .iter_mut()
            .map(|l| Shared::take(l, &payload).unwrap())
            .collect();
        assert_eq!(clones(), before, "no clone of the value");
        assert!(shared.iter().all(|s| Shared::ptr_eq(s, &shared[0])));
        assert!(copies.iter().all(Local::is_empty));
        // The last holder gets the value itself.
        let mut shared = shared;
        let last = shared.pop().unwrap();
        drop(shared);
        assert_eq!(Shared::into_inner(last), Some(Counted("a".into())));
        assert_eq!(clones(), before);
    }

    #[test]
    fn a_rewritten_payload_or_another_type_gives_nothing() {
        let payload = Bytes::from_static(b"\"a\"");
        let mut local = Local::new(Counted("a".into()), &payload);
        assert!(local.take_shared::<String>(&payload).is_none());
        assert!(
            local
                .take_shared::<Counted>(&Bytes::from_static(b"\"b\""))
                .is_none()
        );
        assert!(!local.is_empty(), "a refused take keeps the value");
    }

    #[test]
    fn an_unencoded_value_stays_with_its_envelope() {
        let mut env = crate::message::blank_envelope::<Counted>().unwrap();
        env.set_unencoded(Counted("u".into()));
        let mut copy = env.clone();
        let shared = copy.local.take_shared::<Counted>(&Bytes::new()).unwrap();
        assert_eq!(shared.as_ref().0, "u");
        assert!(
            copy.needs_encoding(),
            "the copy kept the value to encode it"
        );
        copy.encode_payload().unwrap();
        assert_eq!(&copy.payload[..], b"\"u\"");
        let again = env.local.take_shared::<Counted>(&Bytes::new()).unwrap();
        assert!(Shared::ptr_eq(&shared, &again));
    }

    #[test]
    fn try_unwrap_and_unwrap_or_clone() {
        let a = Shared::new(Counted("x".into()));
        let b = a.clone();
        let a = Shared::try_unwrap(a).unwrap_err();
        let before = clones();
        assert_eq!(Shared::unwrap_or_clone(b), Counted("x".into()));
        assert_eq!(clones(), before + 1, "b was not alone");
        assert_eq!(Shared::unwrap_or_clone(a), Counted("x".into()));
        assert_eq!(clones(), before + 1, "a was alone");
        assert_eq!(
            format!("{:?}", Shared::new(Counted("d".into()))),
            "Counted(\"d\")"
        );
    }
}
