//! What a handler tells the bus about one message.

use std::cell::Cell;
use std::time::Duration;

use crate::envelope::Envelope;

thread_local! {
    /// The emptied box of the last reply taken out on this thread ([`Outcome::unbox`]),
    /// holding a vacant envelope (which owns nothing, see `Envelope::take_out`), for the
    /// thread's next [`Outcome::reply`]: a command run on its sender's task (switchyard's
    /// inline commands) makes its reply and takes it out on the one thread, so its round
    /// trip neither allocates nor frees a box.
    static KEPT_REPLY: Cell<Option<Box<Envelope>>> = const { Cell::new(None) };
}

/// The result of handling one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the message is settled.
    Ack,
    /// Try again later (after `after`, or the subscription's retry delay). Counts as an attempt;
    /// when attempts run out the message is dead-lettered.
    Retry {
        /// How long to wait before the next attempt.
        after: Option<Duration>,
    },
    /// Permanently refused: the message goes to the dead-letter queue with this reason.
    Reject {
        /// Why the handler refused it.
        reason: String,
    },
    /// Done, with a reply for the sender of a command or request.
    ///
    /// Boxed, so an `Outcome` (and `Result<Outcome, BoxError>`) stays four words: middleware
    /// moves the result of every call through its layers, and most calls end in `Ack`.
    Reply(Box<Envelope>),
}

impl Outcome {
    /// A retry with the subscription's default delay.
    pub fn retry() -> Self {
        Self::Retry { after: None }
    }

    /// A reply carrying `envelope` (see [`Envelope::reply`]). Its box is the one the
    /// thread's last [`unbox`](Self::unbox) kept, when there is one.
    #[inline]
    pub fn reply(envelope: Envelope) -> Self {
        Self::Reply(match KEPT_REPLY.try_with(Cell::take).ok().flatten() {
            Some(mut kept) => {
                // A kept box holds a vacant envelope, which owns nothing: forgetting it
                // leaks nothing and spares its drop glue.
                std::mem::forget(std::mem::replace(&mut *kept, envelope));
                kept
            }
            None => Box::new(envelope),
        })
    }

    /// The envelope in a reply's box (an [`Outcome::Reply`]'s), moved out; the emptied box
    /// is kept on this thread for its next [`reply`](Self::reply) (one box per thread, the
    /// one kept before is freed). The same as `*boxed`, without freeing the box. A bus
    /// takes its handlers' replies out this way.
    #[inline]
    pub fn unbox(mut boxed: Box<Envelope>) -> Envelope {
        let envelope = boxed.take_out();
        keep_reply_box(boxed);
        envelope
    }

    /// A rejection with a reason.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
        }
    }
}

/// Keeps `boxed` (holding a vacant envelope) as this thread's reply box; the one kept
/// before, if any, is freed. `extern "C"`, so that the compiler knows it does not unwind (it
/// cannot: it drops only vacant envelopes, which own nothing, and a panic across it would
/// abort) and [`Outcome::unbox`] builds the envelope it takes out where its caller wants it,
/// rather than in a temporary kept for an unwind and copied out (a 200-byte `memcpy`).
#[inline(never)]
extern "C" fn keep_reply_box(boxed: Box<Envelope>) {
    // `try_with`: while the thread's locals are torn down, the box is freed.
    let _ = KEPT_REPLY.try_with(|kept| kept.replace(Some(boxed)));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{DeliveryInfo, Kind, Local, Priority, Topic};

    /// An envelope with every field away from its default (rare fields, a typed value, the
    /// delivery bookkeeping, a payload on the heap).
    fn full(alive: &Arc<()>) -> Envelope {
        let parent = Envelope::new(Topic::new("flow.start").unwrap(), "{}");
        let mut env = Envelope::new(
            Topic::new("a.long.topic.name.not.inline").unwrap(),
            vec![7u8; 300],
        )
        .with_kind(Kind::Request)
        .with_header("h", "v")
        .with_priority(Priority(3))
        .caused_by(&parent);
        env.set_source(Some("a-source-name-longer-than-inline".into()));
        env.type_name = Some("some::Type".into());
        env.type_version = 4;
        env.delivery = DeliveryInfo {
            attempt: 2,
            first_delivered_at: Some(UNIX_EPOCH + Duration::from_secs(9)),
            deadline: None,
        };
        env.local = Local::new(Arc::clone(alive), &env.payload);
        env
    }

    fn addr(boxed: &Envelope) -> *const Envelope {
        std::ptr::from_ref(boxed)
    }

    #[test]
    fn an_unboxed_reply_is_the_envelope_that_was_boxed() {
        let alive = Arc::new(());
        let env = full(&alive);
        let expected = env.clone();
        let Outcome::Reply(boxed) = Outcome::reply(env) else {
            panic!("a reply")
        };
        let mut got = Outcome::unbox(boxed);
        assert_eq!(got, expected, "every compared field is moved out");
        assert_eq!(got.source(), Some("a-source-name-longer-than-inline"));
        assert_eq!(got.header("h"), Some("v"));
        assert!(
            got.local.take::<Arc<()>>(&got.payload).is_some(),
            "the typed value too"
        );
    }

    #[test]
    fn a_reply_box_is_kept_for_the_threads_next_reply_and_holds_nothing() {
        let alive = Arc::new(());
        let Outcome::Reply(boxed) = Outcome::reply(full(&alive)) else {
            panic!("a reply")
        };
        let at = addr(&boxed);
        let got = Outcome::unbox(boxed);
        drop(got);
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the kept box holds nothing of the reply"
        );
        let next = Envelope::new(Topic::new("t").unwrap(), "next");
        let Outcome::Reply(again) = Outcome::reply(next.clone()) else {
            panic!("a reply")
        };
        assert_eq!(addr(&again), at, "the kept box is reused");
        assert_eq!(*again, next);
        // Taken: the reply after gets a box of its own.
        let Outcome::Reply(other) = Outcome::reply(next.clone()) else {
            panic!("a reply")
        };
        assert_ne!(addr(&other), at);
        assert_eq!(Outcome::unbox(other), next);
        assert_eq!(Outcome::unbox(again), next);
    }
}
