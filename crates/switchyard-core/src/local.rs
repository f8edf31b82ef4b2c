//! A typed value travelling beside its encoded payload inside one process.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::error::CodecError;
use crate::message::Message;
use crate::shared::Shared;

/// The value a typed message was encoded from, carried beside the payload
/// ([`Envelope::local`](crate::Envelope::local)) while the message stays in the process that
/// published it.
///
/// The value is shared: every copy of the envelope (one per subscription of a fan-out, one
/// per delivery attempt) points to the one value. A typed handler of the same type gets its
/// own clone of it instead of decoding the payload ([`Local::take`]), on every attempt, so a
/// handler that changes its copy changes nothing another handler or a retry sees: each gets
/// the value as it was published (for the usual derived types, what decoding the payload
/// gives; see [`Message`] for what differs). The last holder of the value
/// gets it moved out rather than cloned. This is why [`Message`] requires `Clone`.
/// A typed handler taking [`Shared<T>`](crate::Shared) gets the value itself instead, shared
/// and immutable, with no clone ([`Local::take_shared`]).
///
/// The payload is there too, so transports, raw envelope handlers, hooks and dead letters
/// see exactly what they saw without it, with one exception: when every subscription a
/// typed publish reaches is a typed handler of its type (and nothing else could read the
/// bytes: no transport, hook, layer, filter or ordering key), the bus attaches the value
/// [unencoded](crate::Envelope::set_unencoded) and the payload stays empty until something needs it
/// ([`Envelope::encode_payload`](crate::Envelope::encode_payload): dead letters,
/// serialization, [`Ctx::envelope`](https://docs.rs/switchyard)). The bus attaches a value
/// after its publish hooks ran (only when there are none) and only on its in-process path;
/// nothing serializes the value itself, so it never crosses a transport, and envelopes
/// compare equal whatever it holds.
///
/// A value is only handed over while the envelope's payload is the very buffer it was
/// encoded to (same bytes in memory, same length; the value keeps a reference to that buffer,
/// so it cannot be freed and reused meanwhile): a payload rewritten on the way (by a layer,
/// or a handler that passes a changed copy of its envelope on) is decoded, whatever its
/// length. A layer that rewrites `payload` may also clear the value ([`Local::clear`]).
///
/// ```
/// use switchyard_core::{Bytes, Local};
/// let payload = Bytes::from_static(b"7");
/// let local = Local::new(7u32, &payload);
/// let mut copy = local.clone(); // shares the one value
/// assert_eq!(copy.take::<u64>(&payload), None); // another type: nothing
/// assert_eq!(copy.take::<u32>(&payload), Some(7)); // a clone of the value
/// assert!(copy.is_empty()); // this copy let go of it
/// let mut last = local;
/// assert_eq!(last.take::<u32>(&payload), Some(7)); // the last holder: moved out
/// ```
#[derive(Clone, Default)]
pub struct Local(Option<Arc<dyn Slot>>);

impl Local {
    /// No value (what `default()` gives), as a constant.
    pub(crate) const EMPTY: Self = Self(None);
}

/// A `Value<T>` of some `T`, looked at as [`Any`] (trait upcasting) to find its type: one
/// indirect call (`type_id`) per [`Local::take`]; and its encoding, made on demand.
trait Slot: Any + Send + Sync {
    /// The value's encoding: the payload it was encoded to, or (for a value attached
    /// unencoded) its encoding made now, once for every copy.
    fn encoded(&self) -> Result<Bytes, CodecError>;
    /// The value's type.
    fn value_type(&self) -> TypeId;
    /// Lets go of the encoding made of a value attached unencoded, and says whether its
    /// allocation may be kept for the next value of its type ([`KEPT`]): only when the
    /// value owns nothing (its type has no drop glue), so that keeping it keeps nothing alive.
    fn emptied(&mut self) -> bool;
}

impl<T: Send + Sync + 'static> Slot for Value<T> {
    fn encoded(&self) -> Result<Bytes, CodecError> {
        match &self.encoding {
            Encoding::Given(payload) => Ok(payload.clone()),
            Encoding::Lazy(once, encode) => {
                if let Some(bytes) = once.get() {
                    return Ok(bytes.clone());
                }
                // Two copies encoding at once both encode; the first result is kept (the
                // value, and so its encoding, is the same).
                let bytes = encode(&self.value)?;
                Ok(once.get_or_init(|| bytes).clone())
            }
        }
    }

    fn value_type(&self) -> TypeId {
        TypeId::of::<T>()
    }

    fn emptied(&mut self) -> bool {
        if std::mem::needs_drop::<T>() {
            return false;
        }
        match &mut self.encoding {
            Encoding::Lazy(once, _) => {
                drop(once.take());
                true
            }
            Encoding::Given(_) => false,
        }
    }
}

thread_local! {
    /// The allocation of the last value attached [unencoded](Local::unencoded) that was
    /// [cleared](Local::clear) on this thread by its last holder, for the next value of its
    /// type attached unencoded here (issue 18: a typed command run on its sender's task made
    /// and freed one per round trip). Only a value whose type has no drop glue is kept
    /// ([`Slot::emptied`]): the thread keeps a few bytes, never anything the value owned, nor
    /// its encoding.
    static KEPT: Cell<Option<Arc<dyn Slot>>> = const { Cell::new(None) };
}

pub(crate) struct Value<T> {
    pub(crate) value: T,
    pub(crate) encoding: Encoding<T>,
}

/// The payload a value goes with.
pub(crate) enum Encoding<T> {
    /// The payload it was encoded to ([`Local::new`]): kept so that its buffer stays this
    /// payload's.
    Given(Bytes),
    /// Attached unencoded (`Local::unencoded`): its encoding once made, and how to make it.
    Lazy(OnceLock<Bytes>, fn(&T) -> Result<Bytes, CodecError>),
}

impl<T> Value<T> {
    /// Whether `payload` is the buffer this value was encoded to. `Bytes` never changes in
    /// place and the value keeps its payload's buffer alive, so the same address and length
    /// mean the same bytes. A value attached unencoded also goes with the empty payload its
    /// envelope's copies carry until they ask for the encoding (whether or not another copy
    /// asked already).
    #[inline]
    fn encoded_to(&self, payload: &Bytes) -> bool {
        let same = |own: &Bytes| own.as_ptr() == payload.as_ptr() && own.len() == payload.len();
        match &self.encoding {
            Encoding::Given(own) => same(own),
            Encoding::Lazy(once, _) => payload.is_empty() || once.get().is_some_and(same),
        }
    }
}

/// `slot` as the [`Shared`] value it holds, once its type was checked as a `Value<T>` (the
/// `Arc` itself is handed over).
#[inline]
fn shared_of<T: Send + Sync + 'static>(slot: Arc<dyn Slot>) -> Option<Shared<T>> {
    let slot: Arc<dyn Any + Send + Sync> = slot;
    slot.downcast::<Value<T>>().ok().map(Shared::from_value)
}

impl Local {
    /// Carries `value`, the value `payload` was encoded from.
    pub fn new<T: Clone + Send + Sync + 'static>(value: T, payload: &Bytes) -> Self {
        Self(Some(Arc::new(Value {
            value,
            encoding: Encoding::Given(payload.clone()),
        })))
    }

    /// Carries a typed message not encoded yet (attach it with
    /// [`Envelope::set_unencoded`](crate::Envelope::set_unencoded), which also marks the
    /// envelope's payload as still to be made): typed handlers of its type take the value as
    /// with [`new`](Self::new), while the envelope's payload is empty and after it was made
    /// from the value ([`encoded`](Self::encoded), once for every copy).
    pub(crate) fn unencoded<M: Message>(value: M) -> Self {
        // A type with drop glue never finds a kept block (see `KEPT`): not looked for.
        if !std::mem::needs_drop::<M>()
            && let Some(mut kept) = KEPT.try_with(Cell::take).ok().flatten()
        {
            if let Some(slot) = Arc::get_mut(&mut kept) {
                let slot: &mut (dyn Any + Send + Sync) = slot;
                if let Some(block) = slot.downcast_mut::<Value<M>>() {
                    // Its encoding is already `Lazy(<empty>, M::encode)`: a kept block is one
                    // made here, for an `M`, and emptied when kept (`Slot::emptied`).
                    block.value = value;
                    return Self(Some(kept));
                }
            }
            // Another type's: left for the next value of that type.
            let _ = KEPT.try_with(|k| k.set(Some(kept)));
        }
        Self(Some(Arc::new(Value {
            value,
            encoding: Encoding::Lazy(OnceLock::new(), M::encode),
        })))
    }

    /// The value's encoding, if a value is attached: the payload it came with, or for one
    /// attached [unencoded](crate::Envelope::set_unencoded) its encoding (made now if no copy made it yet;
    /// copies asking at the same moment may each run the encoder, and the first result is
    /// kept for all).
    pub fn encoded(&self) -> Option<Result<Bytes, CodecError>> {
        self.0.as_ref().map(|slot| slot.encoded())
    }

    /// The type of the attached value, if any.
    pub fn value_type(&self) -> Option<TypeId> {
        self.0.as_ref().map(|slot| slot.value_type())
    }

    /// The value, if it is a `T` and `payload` is the buffer it was encoded to (for a value
    /// attached [unencoded](crate::Envelope::set_unencoded) and not encoded yet: an empty payload): a clone
    /// of the shared value, or the value itself when no other copy of this `Local` holds it.
    /// This copy lets go of it either way (it is then [empty](Self::is_empty)), except a
    /// value attached unencoded, which it keeps (cloned out, never moved) so that its
    /// envelope can still be encoded; other copies keep theirs.
    pub fn take<T: Clone + Send + Sync + 'static>(&mut self, payload: &Bytes) -> Option<T> {
        let value = self.value::<T>(payload)?;
        // A value attached unencoded stays with this copy: its envelope can still make its
        // payload ([`Envelope::encode_payload`](crate::Envelope::encode_payload)).
        let keep = matches!(value.encoding, Encoding::Lazy(..));
        if keep
            || self
                .0
                .as_ref()
                .is_some_and(|slot| Arc::strong_count(slot) > 1)
        {
            let value = value.value.clone();
            if !keep {
                self.0 = None;
            }
            return Some(value);
        }
        // The only holder: nobody can clone this `Arc` any more (there are no weak
        // references), so it unwraps; the downcast was checked above.
        let slot: Arc<dyn Any + Send + Sync> = self.0.take()?;
        let value = slot.downcast::<Value<T>>().ok()?;
        Arc::try_unwrap(value).ok().map(|v| v.value)
    }

    /// The value shared, without a copy of it: a [`Shared`] holding the attached value
    /// itself, if it is a `T` and `payload` is the buffer it was encoded to (as for
    /// [`take`](Self::take)). This copy lets go of it (it is then [empty](Self::is_empty)),
    /// except a value attached unencoded, which it keeps so that its envelope can still be
    /// encoded; other copies keep theirs. No `T` is cloned or moved, whoever else holds it.
    ///
    /// ```
    /// use switchyard_core::{Bytes, Local, Shared};
    /// let payload = Bytes::from_static(b"\"seven\"");
    /// let local = Local::new(String::from("seven"), &payload);
    /// let (mut a, mut b) = (local.clone(), local);
    /// let first: Shared<String> = a.take_shared(&payload).unwrap();
    /// let second: Shared<String> = b.take_shared(&payload).unwrap();
    /// assert!(Shared::ptr_eq(&first, &second)); // one value, two holders
    /// assert!(a.is_empty() && b.is_empty());
    /// ```
    pub fn take_shared<T: Send + Sync + 'static>(&mut self, payload: &Bytes) -> Option<Shared<T>> {
        let keep = matches!(self.value::<T>(payload)?.encoding, Encoding::Lazy(..));
        // A value attached unencoded stays with this copy, as in `take`.
        let slot = if keep {
            Arc::clone(self.0.as_ref()?)
        } else {
            self.0.take()?
        };
        shared_of(slot)
    }

    /// The attached value, if it is a `T` and `payload` is the buffer it was encoded to.
    #[inline]
    fn value<T: Send + Sync + 'static>(&self, payload: &Bytes) -> Option<&Value<T>> {
        let slot: &(dyn Any + Send + Sync) = &**self.0.as_ref()?;
        let value = slot.downcast_ref::<Value<T>>()?;
        value.encoded_to(payload).then_some(value)
    }

    /// A clone of the value, if it is a `T` and `payload` is the buffer it was encoded to (as
    /// for [`take`](Self::take)), leaving this `Local` as it is: what [`take`](Self::take) gives
    /// while another copy holds the value, read from a copy that is not changed (the queued
    /// envelope a bus hands its typed handlers without copying it).
    ///
    /// ```
    /// use switchyard_core::{Bytes, Local};
    /// let payload = Bytes::from_static(b"7");
    /// let local = Local::new(7u32, &payload);
    /// assert_eq!(local.cloned::<u32>(&payload), Some(7));
    /// assert_eq!(local.cloned::<u64>(&payload), None);
    /// assert!(!local.is_empty());
    /// ```
    #[inline]
    pub fn cloned<T: Clone + Send + Sync + 'static>(&self, payload: &Bytes) -> Option<T> {
        self.value::<T>(payload).map(|value| value.value.clone())
    }

    /// The value shared, if it is a `T` and `payload` is the buffer it was encoded to (as for
    /// [`take_shared`](Self::take_shared)), leaving this `Local` as it is (a reference count
    /// more; no `T` is cloned or moved).
    ///
    /// ```
    /// use switchyard_core::{Bytes, Local, Shared};
    /// let payload = Bytes::from_static(b"7");
    /// let local = Local::new(7u32, &payload);
    /// let a: Shared<u32> = local.shared(&payload).unwrap();
    /// let b: Shared<u32> = local.shared(&payload).unwrap();
    /// assert!(Shared::ptr_eq(&a, &b) && !local.is_empty());
    /// ```
    #[inline]
    pub fn shared<T: Send + Sync + 'static>(&self, payload: &Bytes) -> Option<Shared<T>> {
        self.value::<T>(payload)?;
        shared_of(Arc::clone(self.0.as_ref()?))
    }

    /// Whether no value is attached (none was, it was cleared, or this copy took it).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Drops the attached value, if any.
    #[inline]
    pub fn clear(&mut self) {
        if let Some(slot) = self.0.take() {
            let_go(slot);
        }
    }
}

/// Drops a value [cleared](Local::clear) from its `Local`, except that its last holder keeps
/// the block of a value attached unencoded that owns nothing on this thread, for the next one
/// (`KEPT`). Out of line: `clear` stays a test of an empty `Local` where it is inlined.
#[inline(never)]
fn let_go(mut slot: Arc<dyn Slot>) {
    if Arc::strong_count(&slot) == 1 && Arc::get_mut(&mut slot).is_some_and(|value| value.emptied())
    {
        let _ = KEPT.try_with(move |k| k.set(Some(slot)));
    }
}

impl PartialEq for Local {
    /// Always equal: the value is a cache of the payload, which is compared.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Local {}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Local(attached)"
        } else {
            "Local(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_payload_is_decoded_not_taken() {
        let payload = Bytes::from_static(b"{\"n\":1}");
        let mut local = Local::new(String::from("one"), &payload);
        assert_eq!(local.take::<String>(&Bytes::from_static(b"{}")), None);
        assert!(!local.is_empty(), "a refused take keeps the value");
        assert_eq!(local.take::<String>(&payload).as_deref(), Some("one"));
    }

    #[test]
    fn a_same_length_rewrite_is_decoded_not_taken() {
        let payload = Bytes::from(b"{\"n\":\"4111\"}".to_vec());
        let mut local = Local::new(String::from("4111"), &payload);
        // The same length, other bytes (masked), as a handler passing a changed copy on.
        let masked = Bytes::from(b"{\"n\":\"****\"}".to_vec());
        assert_eq!(masked.len(), payload.len());
        assert_eq!(local.take::<String>(&masked), None);
        // Equal bytes in another buffer are not the buffer it was encoded to either.
        assert_eq!(
            local.take::<String>(&Bytes::copy_from_slice(&payload)),
            None
        );
        // A clone of the payload shares its buffer: handed over.
        assert_eq!(
            local.take::<String>(&payload.clone()).as_deref(),
            Some("4111")
        );
    }

    #[test]
    fn another_type_keeps_the_value() {
        let payload = Bytes::from_static(b"1");
        let mut local = Local::new(1u8, &payload);
        assert_eq!(local.take::<u16>(&payload), None);
        assert_eq!(local.take::<u8>(&payload), Some(1));
    }

    #[test]
    fn every_copy_gets_the_original_and_the_last_one_moves_it() {
        let payload = Bytes::from_static(b"[1]");
        let original = Arc::new(());
        let mut a = Local::new((vec![1u8], Arc::clone(&original)), &payload);
        let mut b = a.clone();
        let mut c = a.clone();
        let (mut got_a, _) = a.take::<(Vec<u8>, Arc<()>)>(&payload).unwrap();
        got_a.push(2);
        let (got_b, _) = b.take::<(Vec<u8>, Arc<()>)>(&payload).unwrap();
        assert_eq!(got_b, vec![1], "a copy's change is not seen by another");
        // `c` is the last holder: the value moves out, no clone of the `Arc` inside it.
        let before = Arc::strong_count(&original);
        let (got_c, moved) = c.take::<(Vec<u8>, Arc<()>)>(&payload).unwrap();
        assert_eq!(got_c, vec![1]);
        assert_eq!(Arc::strong_count(&original), before);
        drop(moved);
        assert!(a.is_empty() && b.is_empty() && c.is_empty());
    }

    #[test]
    fn cleared_and_empty() {
        let payload = Bytes::from_static(b"1");
        let mut local = Local::new(1u8, &payload);
        assert!(!local.is_empty());
        local.clear();
        assert!(local.is_empty());
        assert_eq!(local.take::<u8>(&payload), None);
        assert_eq!(Local::default(), local);
    }
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Tick {
        n: u32,
    }

    impl crate::Message for Tick {
        const TOPIC: &'static str = "local.tick";
    }

    #[test]
    fn an_unencoded_value_serializes_as_its_encoding_and_stays_takeable() {
        let mut env = crate::message::blank_envelope::<Tick>().unwrap();
        env.set_unencoded(Tick { n: 3 });
        assert!(env.needs_encoding());
        let mut encoded = env.clone();
        encoded.encode_payload().unwrap();
        assert_eq!(&encoded.payload[..], br#"{"n":3}"#);
        // The unencoded envelope is written with the bytes, exactly as its encoded copy.
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            serde_json::to_string(&encoded).unwrap()
        );
        // Both copies still hand the value over, and keep it (they can still be encoded).
        let mut lazy_copy = env.clone();
        assert_eq!(
            lazy_copy.local.take::<Tick>(&Bytes::new()).map(|t| t.n),
            Some(3)
        );
        assert!(lazy_copy.needs_encoding(), "the copy kept the value");
        let payload = encoded.payload.clone();
        assert_eq!(encoded.local.take::<Tick>(&payload).map(|t| t.n), Some(3));
        // A payload rewritten to other bytes is decoded, not handed the value.
        assert_eq!(
            env.local
                .take::<Tick>(&Bytes::from_static(b"{}"))
                .map(|t| t.n),
            None
        );
    }

    #[test]
    fn an_envelope_carrying_its_payload_is_never_reencoded() {
        let payload = Bytes::from_static(b"{\"n\":1}");
        let mut env =
            crate::Envelope::new(crate::Topic::new("local.tick").unwrap(), payload.clone());
        env.local = Local::new(Tick { n: 1 }, &payload);
        assert!(!env.needs_encoding());
        // A payload emptied on purpose stays empty: only unencoded values are encoded.
        env.payload = Bytes::new();
        env.encode_payload().unwrap();
        assert!(env.payload.is_empty());
    }

    /// Where `local`'s value is (its block).
    fn block(local: &Local) -> *const () {
        Arc::as_ptr(local.0.as_ref().unwrap()).cast::<()>()
    }

    #[test]
    fn a_cleared_unencoded_value_that_owns_nothing_leaves_its_block_for_the_next_one() {
        drop(KEPT.with(Cell::take));
        let mut first = Local::unencoded(Tick { n: 1 });
        let at = block(&first);
        // Its encoding made, then let go of with the block kept.
        assert_eq!(&first.encoded().unwrap().unwrap()[..], br#"{"n":1}"#);
        first.clear();
        assert!(first.is_empty());
        let mut second = Local::unencoded(Tick { n: 2 });
        assert_eq!(block(&second), at, "the kept block is reused");
        assert_eq!(
            &second.encoded().unwrap().unwrap()[..],
            br#"{"n":2}"#,
            "the first value's encoding went with it"
        );
        assert_eq!(second.take::<Tick>(&Bytes::new()).map(|t| t.n), Some(2));
        // The block was taken: the next value gets one of its own.
        let third = Local::unencoded(Tick { n: 3 });
        assert_ne!(block(&third), at);
    }

    #[test]
    fn a_value_still_held_elsewhere_or_owning_something_is_not_kept() {
        /// A message that owns something (its type has drop glue).
        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        struct Owning(String);
        impl crate::Message for Owning {
            const TOPIC: &'static str = "local.owning";
        }
        drop(KEPT.with(Cell::take));
        let mut owning = Local::unencoded(Owning("x".into()));
        owning.clear();
        assert!(
            KEPT.with(Cell::take).is_none(),
            "a value owning a String is dropped, not kept"
        );
        // Another holder (a copy of the envelope): the value stays with it, unchanged.
        let mut cleared = Local::unencoded(Tick { n: 4 });
        let held = cleared.clone();
        cleared.clear();
        assert!(KEPT.with(Cell::take).is_none(), "still held: not kept");
        let next = Local::unencoded(Tick { n: 5 });
        assert_ne!(block(&next), block(&held));
        assert_eq!(held.cloned::<Tick>(&Bytes::new()).map(|t| t.n), Some(4));
        // A value attached with its payload is never kept.
        let payload = Bytes::from_static(b"{\"n\":6}");
        let mut given = Local::new(Tick { n: 6 }, &payload);
        given.clear();
        assert!(KEPT.with(Cell::take).is_none());
    }
}
