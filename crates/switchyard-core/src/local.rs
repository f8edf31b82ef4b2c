//! A typed value travelling beside its encoded payload inside one process.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The value a typed message was encoded from, carried beside the payload
/// ([`Envelope::local`](crate::Envelope::local)) while the message stays in the process that
/// published it.
///
/// A typed handler of the same type takes the value instead of decoding the payload: the
/// first one to ask gets it, every later reader (another subscriber, a retry, a replay)
/// decodes the payload as usual. The payload is always there too, so transports, raw
/// envelope handlers, hooks and dead letters see exactly what they saw without it. The bus
/// attaches a value after its publish hooks ran and only on its in-process path; nothing
/// serializes it, so it never crosses a transport, and envelopes compare equal whatever it
/// holds.
///
/// A layer that rewrites `payload` on the way to a typed handler must clear it
/// ([`Local::clear`]); as a guard, a value is only handed over while the payload has the
/// length it was encoded to.
///
/// ```
/// use switchyard_core::{Bytes, Local};
/// let payload = Bytes::from_static(b"7");
/// let local = Local::new(7u32, &payload);
/// let copy = local.clone(); // shares the one value
/// assert_eq!(copy.take::<u64>(&payload), None); // another type: nothing
/// assert_eq!(copy.take::<u32>(&payload), Some(7));
/// assert_eq!(local.take::<u32>(&payload), None); // taken once
/// ```
#[derive(Clone, Default)]
pub struct Local(Option<Arc<dyn Slot>>);

trait Slot: Send + Sync {
    /// Moves the value into `out` when `out` is an `Option` of its type.
    fn take_into(&self, out: &mut dyn Any);
    /// The encoded payload's length when the value was attached.
    fn payload_len(&self) -> usize;
}

struct Value<T> {
    value: Mutex<Option<T>>,
    payload_len: usize,
}

impl<T: Send + 'static> Slot for Value<T> {
    fn take_into(&self, out: &mut dyn Any) {
        if let Some(out) = out.downcast_mut::<Option<T>>() {
            *out = self
                .value
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
        }
    }

    fn payload_len(&self) -> usize {
        self.payload_len
    }
}

impl Local {
    /// Carries `value`, the value `payload` was encoded from.
    pub fn new<T: Send + 'static>(value: T, payload: &Bytes) -> Self {
        Self(Some(Arc::new(Value {
            value: Mutex::new(Some(value)),
            payload_len: payload.len(),
        })))
    }

    /// Takes the value if it is a `T`, nobody took it yet and `payload` has the length it
    /// was encoded to.
    pub fn take<T: 'static>(&self, payload: &Bytes) -> Option<T> {
        let slot = self.0.as_ref()?;
        if slot.payload_len() != payload.len() {
            return None;
        }
        let mut out: Option<T> = None;
        slot.take_into(&mut out);
        out
    }

    /// Whether no value is attached (taken values still count as attached).
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
        let local = Local::new(String::from("one"), &payload);
        assert_eq!(local.take::<String>(&Bytes::from_static(b"{}")), None);
        assert_eq!(local.take::<String>(&payload).as_deref(), Some("one"));
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
