//! Typed messages stay typed in process (issue 18): a typed publish hands its value to the
//! first typed handler instead of encoding and decoding it, and every other reader decodes
//! the payload, which is always there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Message, Outcome};
use tokio::sync::mpsc;

use crate::WAIT;

/// How many times a `Counted` was decoded from bytes.
static DECODES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, PartialEq)]
struct Counted {
    n: u64,
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            n: u64,
        }
        DECODES.fetch_add(1, Ordering::SeqCst);
        Raw::deserialize(d).map(|r| Counted { n: r.n })
    }
}

impl Message for Counted {
    const TOPIC: &'static str = "local.counted";
}

/// A typed subscription that sends every value it gets (and fails the first attempt of each
/// message when `fail_first`).
async fn typed(
    bus: &Bus,
    name: &str,
    fail_first: bool,
) -> (mpsc::UnboundedReceiver<u64>, switchyard::Subscription) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |m: Counted, ctx| {
            let tx = tx.clone();
            async move {
                if fail_first && ctx.envelope().delivery.attempt == 1 {
                    return Ok::<_, String>(Outcome::retry());
                }
                tx.send(m.n).map_err(|e| e.to_string())?;
                Ok(Outcome::Ack)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    (rx, sub)
}

async fn received(rx: &mut mpsc::UnboundedReceiver<u64>, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    got.sort_unstable();
    got
}

/// One test, so that the one decode counter sees one scenario at a time.
#[tokio::test]
async fn a_typed_publish_hands_its_value_to_the_first_typed_handler() {
    const N: u64 = 20;
    let expected: Vec<u64> = (0..N).collect();

    // One typed subscriber beside a raw one: nothing is decoded, the raw one sees the JSON.
    let bus = Bus::new();
    let raw = Recorder::start(&bus, Counted::TOPIC).await.unwrap();
    let (mut rx, _s) = typed(&bus, "one", false).await;
    let before = DECODES.load(Ordering::SeqCst);
    for n in 0..N {
        bus.publish(Counted { n }).await.unwrap();
    }
    assert_eq!(received(&mut rx, N as usize).await, expected);
    let envs = raw.wait_for(N as usize, WAIT).await.unwrap();
    assert_eq!(&envs[3].payload[..], br#"{"n":3}"#);
    assert_eq!(
        DECODES.load(Ordering::SeqCst) - before,
        0,
        "decoded in process"
    );
    bus.shutdown(WAIT).await.unwrap();

    // Two typed subscribers: one takes the value, the other decodes.
    let bus = Bus::new();
    let (mut a, _sa) = typed(&bus, "a", false).await;
    let (mut b, _sb) = typed(&bus, "b", false).await;
    let before = DECODES.load(Ordering::SeqCst);
    for n in 0..N {
        bus.publish(Counted { n }).await.unwrap();
    }
    assert_eq!(received(&mut a, N as usize).await, expected);
    assert_eq!(received(&mut b, N as usize).await, expected);
    assert_eq!(DECODES.load(Ordering::SeqCst) - before, N as usize);
    bus.shutdown(WAIT).await.unwrap();

    // A retried message: the first attempt took the value, the second decodes the payload.
    let bus = Bus::new();
    let (mut rx, _s) = typed(&bus, "retried", true).await;
    let before = DECODES.load(Ordering::SeqCst);
    for n in 0..N {
        bus.publish(Counted { n }).await.unwrap();
    }
    assert_eq!(received(&mut rx, N as usize).await, expected);
    assert_eq!(DECODES.load(Ordering::SeqCst) - before, N as usize);
    bus.shutdown(WAIT).await.unwrap();

    // A publish hook may rewrite the payload: then every handler decodes what it left.
    let bus = Bus::builder()
        .publish_hook(|env| {
            env.payload = br#"{"n":99}"#.as_slice().into();
            Ok(())
        })
        .build()
        .unwrap();
    let (mut rx, _s) = typed(&bus, "hooked", false).await;
    let before = DECODES.load(Ordering::SeqCst);
    for n in 0..N {
        bus.publish(Counted { n }).await.unwrap();
    }
    assert_eq!(received(&mut rx, N as usize).await, vec![99; N as usize]);
    assert_eq!(DECODES.load(Ordering::SeqCst) - before, N as usize);
    bus.shutdown(WAIT).await.unwrap();
}
