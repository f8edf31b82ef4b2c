//! One settled envelope's allocation per thread, kept for the next publish on that thread.
//!
//! Every publish allocates the `Arc` its envelope is shared in, and every settled message
//! frees one; the queue already hands settled envelopes back to the publishers' threads
//! (`State::spent`), which dropped them there. Instead the pusher leaves the last one here,
//! and the next publish on the thread writes its envelope into that block when nothing else
//! holds it (`Arc::get_mut`): a write of the envelope instead of a `malloc` and a `free`.
//! The queue's settled envelopes (`spent`) and finished inline commands come here, one per
//! thread at most and only while nothing else holds them; the block is kept, not the message:
//! its payload and typed value are let go of at once, so a thread never holds on to a
//! payload (a command of any size runs inline) until its next publish, which may never come.
//! Without the thread's locals (being destroyed), nothing is kept and a new block is made.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use switchyard_core::Envelope;

thread_local! {
    static SPARE: Cell<Option<Arc<Envelope>>> = const { Cell::new(None) };
}

/// Keeps `env`'s block for this thread's next [`shared`] (the one kept before is dropped)
/// when nothing else holds it; else lets go of it. The payload and a typed value carried
/// beside it are dropped now: the thread keeps the allocation, not the message (an
/// application's value, whose `Drop` might need what is gone when thread-locals are
/// destroyed, or a large payload until the thread's next publish).
#[inline]
pub(crate) fn keep(mut env: Arc<Envelope>) {
    // A plain load first: a fan-out's envelope is usually still held by other queues, and
    // `get_mut` alone would lock and unlock the weak count to find that out.
    if Arc::strong_count(&env) != 1 {
        return;
    }
    let Some(block) = Arc::get_mut(&mut env) else {
        return;
    };
    if !block.local.is_empty() {
        block.local.clear();
    }
    block.payload = Bytes::new();
    // `try_with`: during the thread's teardown the spare is gone, and the block is let go of.
    let before = SPARE.try_with(|spare| spare.replace(Some(env)));
    drop(before);
}

/// `env` in an `Arc`: the spare block when this thread has one that nothing else holds (its
/// old envelope is dropped), else a new one. Always inlined: the caller's envelope is then
/// written into the block from where it was built, not first copied into this call's
/// argument (which the compiler did whenever the codegen units left this out of line).
#[inline(always)]
pub(crate) fn shared(env: Envelope) -> Arc<Envelope> {
    match SPARE.try_with(Cell::take).ok().flatten() {
        Some(mut spare) => match Arc::get_mut(&mut spare) {
            Some(block) => {
                *block = env;
                spare
            }
            None => Arc::new(env),
        },
        None => Arc::new(env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Topic;

    fn env(payload: &'static str) -> Envelope {
        Envelope::new(Topic::new("t").unwrap(), payload)
    }

    /// Found by review: an inline command's envelope, of any size, came here with its
    /// payload, which then stayed alive until the thread's next publish.
    #[test]
    fn a_kept_block_lets_go_of_its_payload_at_once() {
        let big = Envelope::new(Topic::new("t").unwrap(), vec![b' '; 1 << 20]);
        keep(Arc::new(big));
        let kept = SPARE.with(Cell::take).expect("the block is kept");
        assert_eq!(
            kept.payload.len(),
            0,
            "the thread keeps the block, not the payload"
        );
    }

    #[test]
    fn a_block_nothing_else_holds_is_reused_for_the_next_envelope() {
        let settled = Arc::new(env("old"));
        let block = Arc::as_ptr(&settled);
        keep(settled);
        let next = shared(env("new"));
        assert_eq!(Arc::as_ptr(&next), block, "the spare block is reused");
        assert_eq!(&next.payload[..], b"new");
        // The spare was taken: the one after gets a block of its own.
        let after = shared(env("after"));
        assert_ne!(Arc::as_ptr(&after), block);
        assert_eq!(&after.payload[..], b"after");
    }

    #[test]
    fn a_kept_envelope_lets_go_of_its_typed_value_at_once() {
        /// Holds a count on `alive` for as long as it lives.
        #[derive(Clone)]
        struct Value(#[allow(dead_code)] Arc<()>);
        let alive = Arc::new(());
        let mut e = env("typed");
        e.local = switchyard_core::Local::new(Value(Arc::clone(&alive)), &e.payload);
        assert_eq!(Arc::strong_count(&alive), 2);
        keep(Arc::new(e));
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the value is dropped when kept"
        );
        let next = shared(env("next"));
        assert_eq!(&next.payload[..], b"next");
    }

    #[test]
    fn a_block_someone_still_holds_is_left_alone() {
        let settled = Arc::new(env("held"));
        let holder = Arc::clone(&settled);
        keep(settled);
        let next = shared(env("new"));
        assert_ne!(Arc::as_ptr(&next), Arc::as_ptr(&holder));
        assert_eq!(
            &holder.payload[..],
            b"held",
            "the holder's envelope is unchanged"
        );
        assert_eq!(&next.payload[..], b"new");
        assert_eq!(Arc::strong_count(&holder), 1, "the spare let go of it");
    }
}
