//! A typed value travelling beside its encoded payload inside one process.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// The value a typed message was encoded from, carried beside the payload
/// ([`Envelope::local`](crate::Envelope::local)) while the message stays in the process that
/// published it.
///
/// The value is shared: every copy of the envelope (one per subscription of a fan-out, one
/// per delivery attempt) points to the one value. A typed handler of the same type gets its
/// own clone of it instead of decoding the payload ([`Local::take`]), on every attempt, so a
/// handler that changes its copy changes nothing another handler or a retry sees: each gets
/// the value as it was published (for the usual derived types, what decoding the payload
/// gives; see [`Message`](crate::Message) for what differs). The last holder of the value
/// gets it moved out rather than cloned. This is why [`Message`](crate::Message) requires `Clone`.
///
/// The payload is always there too, so transports, raw envelope handlers, hooks and dead
/// letters see exactly what they saw without it. The bus attaches a value after its publish
/// hooks ran (only when there are none) and only on its in-process path; nothing serializes
/// it, so it never crosses a transport, and envelopes compare equal whatever it holds.
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

/// A `Value<T>` of some `T`, looked at as [`Any`] (trait upcasting) to find its type: one
/// indirect call (`type_id`) per [`Local::take`].
trait Slot: Any + Send + Sync {}

impl<T: Send + Sync + 'static> Slot for Value<T> {}

struct Value<T> {
    value: T,
    /// The payload it was encoded to: kept so that its buffer stays this payload's.
    payload: Bytes,
}

impl<T> Value<T> {
    /// Whether `payload` is the buffer this value was encoded to. `Bytes` never changes in
    /// place and `self.payload` keeps its buffer alive, so the same address and length mean
    /// the same bytes.
    #[inline]
    fn encoded_to(&self, payload: &Bytes) -> bool {
        self.payload.as_ptr() == payload.as_ptr() && self.payload.len() == payload.len()
    }
}

impl Local {
    /// Carries `value`, the value `payload` was encoded from.
    pub fn new<T: Clone + Send + Sync + 'static>(value: T, payload: &Bytes) -> Self {
        Self(Some(Arc::new(Value {
            value,
            payload: payload.clone(),
        })))
    }

    /// The value, if it is a `T` and `payload` is the buffer it was encoded to: a clone of
    /// the shared value, or the value itself when no other copy of this `Local` holds it.
    /// This copy lets go of it either way (it is then [empty](Self::is_empty)); other copies
    /// keep theirs.
    pub fn take<T: Clone + Send + Sync + 'static>(&mut self, payload: &Bytes) -> Option<T> {
        let slot: &(dyn Any + Send + Sync) = &**self.0.as_ref()?;
        let value = slot.downcast_ref::<Value<T>>()?;
        if !value.encoded_to(payload) {
            return None;
        }
        if self
            .0
            .as_ref()
            .is_some_and(|slot| Arc::strong_count(slot) > 1)
        {
            let value = value.value.clone();
            self.0 = None;
            return Some(value);
        }
        // The only holder: nobody can clone this `Arc` any more (there are no weak
        // references), so it unwraps; the downcast was checked above.
        let slot: Arc<dyn Any + Send + Sync> = self.0.take()?;
        let value = slot.downcast::<Value<T>>().ok()?;
        Arc::try_unwrap(value).ok().map(|v| v.value)
    }

    /// Whether no value is attached (none was, it was cleared, or this copy took it).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Drops the attached value, if any.
    pub fn clear(&mut self) {
        self.0 = None;
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
}
