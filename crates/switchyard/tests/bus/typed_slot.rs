//! Inline command attempts. The typed output slot (`state.rs` `TypedSlot`): only the handler of
//! the message it was made for fills it, also when another command runs nested inline in that
//! attempt; none is left on the thread after a panic, a dropped sender or a thread change.
//! (From review rev1 of issue 18; the first and last tests failed before the slot knew its
//! owner.) And a waiting inline call is polled once per wake.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message};

use crate::{Double, WAIT};

/// A command whose output type is the same as [`Double`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outer {
    pub n: u64,
}
impl Message for Outer {
    const TOPIC: &'static str = "typed_slot.outer";
    const KIND: Kind = Kind::Command;
}
impl Command for Outer {
    type Output = u64;
}

/// A typed handler that sends a raw (untyped) command on the same bus, inline: the nested
/// sender must get its reply (the JSON the inner typed handler encodes), not an empty ack.
#[tokio::test(flavor = "current_thread")]
async fn a_raw_send_from_inside_a_typed_handler_gets_its_reply() {
    let bus = Bus::new();
    let _inner = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n * 2) })
        .start()
        .await
        .unwrap();
    let seen: Arc<Mutex<Option<Option<Vec<u8>>>>> = Arc::default();
    let (b, s) = (bus.clone(), seen.clone());
    let _outer = bus
        .handle(move |c: Outer, _| {
            let (b, s) = (b.clone(), s.clone());
            async move {
                let env = Double { n: 5 }.to_envelope().unwrap();
                let result = b.send_envelope(env).await.unwrap();
                *s.lock().unwrap() = Some(result.reply.map(|r| r.payload.to_vec()));
                Ok::<_, std::io::Error>(c.n + 1)
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Outer { n: 1 }).await.unwrap(), 2);
    assert_eq!(
        seen.lock().unwrap().take(),
        Some(Some(b"10".to_vec())),
        "the nested raw sender's reply"
    );
}

/// A future that is pending until `open`, counting its polls and keeping the last waker.
struct Gate {
    polls: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<Waker>>>,
    open: Arc<AtomicUsize>,
}
impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        if self.open.load(Ordering::SeqCst) == 1 {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// An output with no JSON form: a sender gets it only if it was handed over as it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Opaque(pub u64);
impl Serialize for Opaque {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Opaque has no JSON form"))
    }
}
impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Opaque has no JSON form"))
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MakeOpaque {
    pub n: u64,
}
impl Message for MakeOpaque {
    const TOPIC: &'static str = "typed_slot.opaque";
    const KIND: Kind = Kind::Command;
}
impl Command for MakeOpaque {
    type Output = Opaque;
}

/// No typed slot is left on the thread: a raw sender of `MakeOpaque` gets the encoding
/// failure (with a leaked slot wanting `Opaque`, the handler's output would vanish into it
/// and the raw sender would get an empty ack).
async fn no_slot_left(bus: &Bus) {
    let env = MakeOpaque { n: 0 }.to_envelope().unwrap();
    match bus.send_envelope(env).await {
        Err(switchyard::SendError::Failed { error, .. }) => {
            assert!(error.contains("no JSON form"), "{error}")
        }
        other => panic!("expected the encoding failure, got {other:?}"),
    }
}

/// Typed handoff when the handler's future moves between the threads of a multi-thread
/// runtime (woken from a blocking thread, many senders at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_typed_output_is_handed_over_when_the_handler_moves_between_threads() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let _h = bus
        .handle(|c: MakeOpaque, _| async move {
            for _ in 0..3 {
                tokio::task::spawn_blocking(std::thread::yield_now)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            if c.n == 0 {
                return Err(std::io::Error::other("zero"));
            }
            Ok::<_, std::io::Error>(Opaque(c.n))
        })
        .workers(8)
        .start()
        .await
        .unwrap();
    let mut senders = Vec::new();
    for t in 0..8u64 {
        let b = bus.clone();
        senders.push(tokio::spawn(async move {
            for i in 1..=40u64 {
                let n = t * 1000 + i;
                assert_eq!(b.send(MakeOpaque { n }).await.unwrap(), Opaque(n));
            }
        }));
    }
    for s in senders {
        tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
    }
}

/// A typed first attempt that panics, then a retry that answers: the output still handed
/// over, and nothing of the slot left on the thread afterwards.
#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_a_typed_first_attempt_leaves_no_slot_behind() {
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let _h = bus
        .handle(|c: MakeOpaque, ctx: switchyard::Ctx| {
            assert!(ctx.attempt() > 1 || c.n != 1, "boom in the call");
            async move {
                assert!(ctx.attempt() > 1 || c.n != 2, "boom in the poll");
                Ok::<_, std::io::Error>(Opaque(c.n))
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(MakeOpaque { n: 1 }).await.unwrap(), Opaque(1));
    assert_eq!(bus.send(MakeOpaque { n: 2 }).await.unwrap(), Opaque(2));
    no_slot_left(&bus).await;
}

/// A typed send dropped while its inline first call waits: the command still finishes (in
/// a task of its own), and no slot is left on the thread.
#[tokio::test(flavor = "current_thread")]
async fn a_typed_send_dropped_mid_attempt_finishes_and_leaves_no_slot() {
    let bus = Bus::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, c2) = (release.clone(), calls.clone());
    let h = bus
        .handle(move |c: MakeOpaque, _| {
            let (r, c2) = (r.clone(), c2.clone());
            async move {
                if c.n == 7 {
                    r.notified().await;
                }
                c2.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Opaque(c.n))
            }
        })
        .start()
        .await
        .unwrap();
    tokio::select! {
        biased;
        _ = bus.send(MakeOpaque { n: 7 }) => panic!("the handler waits"),
        () = std::future::ready(()) => {}
    }
    release.notify_one();
    tokio::time::timeout(WAIT, async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    no_slot_left(&bus).await;
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let stats = h.stats();
    assert_eq!((stats.acked, stats.dead_lettered), (1, 1));
    assert_eq!(bus.pending(), 0);
}

/// A raw send whose inline first call waits and fails, then succeeds: the attempts the
/// sender hears and the deliveries counted are one each per call.
#[tokio::test(flavor = "current_thread")]
async fn attempts_and_deliveries_of_an_inline_command_that_waited_are_counted_once() {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let h = bus
        .handle(|c: Double, ctx: switchyard::Ctx| async move {
            tokio::task::yield_now().await;
            if ctx.attempt() < 2 {
                return Err(std::io::Error::other("first fails"));
            }
            Ok(c.n * 2)
        })
        .start()
        .await
        .unwrap();
    let result = bus
        .send_envelope(Double { n: 3 }.to_envelope().unwrap())
        .await
        .unwrap();
    assert_eq!(result.reply.unwrap().payload.as_ref(), b"6");
    assert_eq!(result.attempts, 2);
    let s = h.stats();
    assert_eq!((s.delivered, s.acked, s.failed, s.retried), (2, 1, 1, 1));
}

/// A typed command (carried unencoded) whose inline first attempt fails for good: its dead
/// letter has the command's bytes; so has one whose first call waits before failing.
#[tokio::test(flavor = "current_thread")]
async fn a_typed_command_failing_inline_is_dead_lettered_with_its_bytes() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let _h = bus
        .handle(|c: Double, _| async move {
            if c.n == 2 {
                tokio::task::yield_now().await;
            }
            Err::<u64, _>(std::io::Error::other("no"))
        })
        .start()
        .await
        .unwrap();
    assert!(bus.send(Double { n: 1 }).await.is_err());
    assert!(bus.send(Double { n: 2 }).await.is_err());
    let letters = bus.dead_letters().unwrap().list();
    let bytes: Vec<_> = letters
        .iter()
        .map(|l| String::from_utf8_lossy(l.envelope.payload.as_ref()).into_owned())
        .collect();
    assert_eq!(
        bytes,
        vec![r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()]
    );
}

/// A typed sender of `Outer` to a raw (envelope) handler, which replies `100` and on the way
/// sends a raw `Double` whose typed handler outputs a `u64` too: the typed sender must get
/// its own handler's reply, not the nested handler's output.
#[tokio::test(flavor = "current_thread")]
async fn a_typed_sender_gets_its_own_handlers_reply_not_a_nested_commands_output() {
    use switchyard::{Envelope, Outcome, handler_fn};
    let bus = Bus::new();
    let _inner = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n * 2) })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let _outer = bus
        .handle_envelope(
            "outer",
            Outer::TOPIC,
            handler_fn(move |env: Envelope| {
                let b = b.clone();
                async move {
                    let nested = Double { n: 5 }.to_envelope().unwrap();
                    let _ = b.send_envelope(nested).await;
                    Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("100")))
                }
            }),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Outer { n: 1 }).await.unwrap(), 100);
}

/// An inline command whose first call waits is not polled again before it is woken (the run
/// polled it twice in a row: (2, 3) before the fix).
#[tokio::test(flavor = "current_thread")]
async fn an_inline_call_that_waits_is_not_polled_again_before_its_wake() {
    let bus = Bus::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let open = Arc::new(AtomicUsize::new(0));
    let (p, w, o) = (polls.clone(), waker.clone(), open.clone());
    let _h = bus
        .handle(move |c: Double, _| {
            let gate = Gate {
                polls: p.clone(),
                waker: w.clone(),
                open: o.clone(),
            };
            async move {
                gate.await;
                Ok::<_, std::io::Error>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    tokio::time::timeout(WAIT, async {
        while waker.lock().unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let before_wake = polls.load(Ordering::SeqCst);
    open.store(1, Ordering::SeqCst);
    waker.lock().unwrap().take().unwrap().wake();
    assert_eq!(sender.await.unwrap().unwrap(), 8);
    assert_eq!(
        (before_wake, polls.load(Ordering::SeqCst)),
        (1, 2),
        "(polls before the wake, polls in all)"
    );
}
