//! The box of an envelope's rare fields, and the few spare boxes each thread keeps.
//!
//! A message that sets one rare field (a reply's causation id and target, a message published
//! from a handler, which records its cause) pays a box for them. Every command reply makes one
//! and drops it a moment later on the same thread: `malloc` and `free` of it cost ~140
//! instructions of a round trip (issue 18). A dropped box is emptied and kept on its thread
//! instead (one per thread), and the next rare fields made there take it.

use std::cell::Cell;

use smol_str::SmolStr;

use super::Rare;
use crate::MessageId;

thread_local! {
    /// An emptied box (every field at its default), for the next rare fields of this thread.
    static SPARE: Cell<Option<Box<Rare>>> = const { Cell::new(None) };
}

/// The rare fields of one envelope: `None` while all have their defaults. One pointer wide.
#[derive(Default)]
pub(super) struct RareSlot(Option<Box<Rare>>);

// `Envelope` holds it beside its other fields at the size it had as `Option<Box<Rare>>`.
const _: () = assert!(std::mem::size_of::<RareSlot>() == std::mem::size_of::<usize>());

impl RareSlot {
    /// No rare fields (what `default()` gives), as a constant.
    pub(super) const EMPTY: Self = Self(None);

    /// A slot holding `rare` (in a spare box if this thread has one). Out of line, as every
    /// path to a box: the envelope's constructors, setters and clone, inlined everywhere,
    /// stay small.
    #[inline(never)]
    pub(super) fn filled(rare: Rare) -> Self {
        let spare = SPARE.try_with(Cell::take).ok().flatten();
        Self(Some(match spare {
            Some(mut boxed) => {
                // A spare holds only defaults (emptied when kept), which own nothing:
                // forgetting them leaks nothing and spares their drop glue.
                std::mem::forget(std::mem::replace(&mut *boxed, rare));
                boxed
            }
            None => Box::new(rare),
        }))
    }

    /// A slot holding a causation id and a target, every other field at its default: a
    /// reply's ([`ReplyAddress::reply`](crate::envelope::ReplyAddress::reply)). In a spare
    /// box, only those two fields are written (the spare holds defaults), rather than a whole
    /// `Rare` built and copied in.
    #[inline(never)]
    pub(super) fn caused(causation_id: MessageId, target: Option<SmolStr>) -> Self {
        match SPARE.try_with(Cell::take).ok().flatten() {
            Some(mut boxed) => {
                // Both at their defaults (`None`), which own nothing: written over without
                // their drop glue.
                std::mem::forget(boxed.causation_id.replace(causation_id));
                std::mem::forget(std::mem::replace(&mut boxed.target, target));
                Self(Some(boxed))
            }
            None => Self(Some(Box::new(Rare {
                causation_id: Some(causation_id),
                target,
                ..Rare::default()
            }))),
        }
    }

    /// The fields, if any is set.
    #[inline]
    pub(super) fn get(&self) -> Option<&Rare> {
        self.0.as_deref()
    }

    /// The fields to change, if a box is there.
    #[inline]
    pub(super) fn get_mut(&mut self) -> Option<&mut Rare> {
        self.0.as_deref_mut()
    }

    /// The fields to change, in a box made (or taken from the spares) if there is none.
    #[inline]
    pub(super) fn get_or_fill(&mut self) -> &mut Rare {
        if self.0.is_none() {
            // (The empty slot replaced has nothing to drop.)
            self.0 = Self::filled(Rare::default()).0.take();
        }
        // Filled just above when it was empty.
        self.0.get_or_insert_with(Box::default)
    }

    /// Whether a box is there.
    #[inline]
    pub(super) fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl Clone for RareSlot {
    #[inline]
    fn clone(&self) -> Self {
        match self.get() {
            None => Self(None),
            Some(rare) => Self::filled(rare.clone()),
        }
    }
}

impl Drop for RareSlot {
    #[inline] // most envelopes have no box: the check costs a comparison in place
    fn drop(&mut self) {
        if let Some(boxed) = self.0.take() {
            keep(boxed);
        }
    }
}

/// Empties `boxed` and keeps it as this thread's spare.
#[inline(never)]
fn keep(mut boxed: Box<Rare>) {
    // The fields go now (nothing of them stays alive in a spare).
    *boxed = Rare::default();
    // A box already kept there is let go of.
    let _ = SPARE.try_with(move |spare| spare.replace(Some(boxed)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare() -> Option<Box<Rare>> {
        SPARE.with(Cell::take)
    }

    #[test]
    fn a_dropped_box_is_emptied_kept_and_taken_again() {
        drop(spare());
        let slot = RareSlot::filled(Rare {
            causation_id: Some(MessageId::new()),
            source: Some("s".into()),
            ..Rare::default()
        });
        let clone = slot.clone();
        assert_eq!(clone.get(), slot.get());
        let address = std::ptr::from_ref(clone.get().unwrap());
        drop(slot);
        drop(clone);
        // The last one dropped is kept, holding nothing of what it carried.
        let kept = spare().expect("a spare box");
        assert_eq!(*kept, Rare::default());
        assert_eq!(std::ptr::from_ref(&*kept), address);
        SPARE.with(|s| s.set(Some(kept)));
        // The next rare fields made on this thread take it.
        let mut again = RareSlot::filled(Rare::default());
        assert_eq!(std::ptr::from_ref(again.get().unwrap()), address);
        assert!(spare().is_none());
        again.get_or_fill().target = Some("t".into());
        assert_eq!(again.get().and_then(|r| r.target.as_deref()), Some("t"));
    }

    #[test]
    fn a_reply_s_fields_take_a_spare_box_and_only_set_their_own() {
        drop(spare());
        let id = MessageId::new();
        // Without a spare: a new box.
        let fresh = RareSlot::caused(id.clone(), Some("to".into()));
        let expected = Rare {
            causation_id: Some(id.clone()),
            target: Some("to".into()),
            ..Rare::default()
        };
        assert_eq!(fresh.get(), Some(&expected));
        let address = std::ptr::from_ref(fresh.get().unwrap());
        // Dropped (emptied and kept), then taken by the next reply's fields.
        let other = RareSlot::filled(Rare {
            source: Some("s".into()),
            content_type: Some("c".into()),
            ..Rare::default()
        });
        drop(fresh);
        drop(other);
        let again = RareSlot::caused(id.clone(), None);
        assert_ne!(
            std::ptr::from_ref(again.get().unwrap()),
            address,
            "the last box dropped is the one kept"
        );
        assert_eq!(
            again.get(),
            Some(&Rare {
                causation_id: Some(id),
                ..Rare::default()
            }),
            "nothing of the box's last fields is left"
        );
    }
}
