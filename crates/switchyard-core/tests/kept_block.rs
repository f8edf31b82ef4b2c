//! Review rev2: the kept block of a cleared unencoded value (`Local`, issue 18), through the
//! public API: values of two types alternating, values attached on one thread and cleared on
//! another, a `Shared` of a kept-block type, and the encoding of a reused block.
#![allow(clippy::unwrap_used, missing_docs)]

use serde::{Deserialize, Serialize};
use switchyard_core::{Bytes, Envelope, Message, Shared, Topic};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
impl Message for Tick {
    const TOPIC: &'static str = "rev2.tick";
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tock {
    a: u32,
    b: u8,
}
impl Message for Tock {
    const TOPIC: &'static str = "rev2.tock";
}

fn env<M: Message>(value: M) -> Envelope {
    let mut env = Envelope::new(Topic::new(M::TOPIC).unwrap(), Bytes::new());
    env.set_unencoded(value);
    env
}

fn bytes(env: &Envelope) -> Vec<u8> {
    env.local.encoded().unwrap().unwrap().to_vec()
}

/// A value encoded, cleared, then values of the other type and of its own: each new value's
/// encoding is its own (never the cleared value's), and typed reads give the new value.
#[test]
fn reused_blocks_encode_and_read_their_new_value_whatever_came_before() {
    for round in 0..50u64 {
        let mut a = env(Tick { n: round });
        assert_eq!(bytes(&a), format!(r#"{{"n":{round}}}"#).as_bytes());
        a.encode_payload().unwrap();
        a.local.clear();
        let mut b = env(Tock {
            a: round as u32,
            b: 7,
        });
        assert_eq!(
            b.local.cloned::<Tick>(&b.payload),
            None,
            "a Tock read as a Tick"
        );
        assert_eq!(
            b.local.cloned::<Tock>(&b.payload),
            Some(Tock {
                a: round as u32,
                b: 7
            })
        );
        assert_eq!(bytes(&b), format!(r#"{{"a":{round},"b":7}}"#).as_bytes());
        b.local.clear();
        let mut c = env(Tick { n: round + 1000 });
        assert!(
            c.payload.is_empty(),
            "a new value's payload is made on demand"
        );
        assert_eq!(
            c.local.cloned::<Tick>(&c.payload),
            Some(Tick { n: round + 1000 })
        );
        c.encode_payload().unwrap();
        assert_eq!(
            &c.payload[..],
            format!(r#"{{"n":{}}}"#, round + 1000).as_bytes(),
            "the old encoding leaked into the reused block"
        );
        c.local.clear();
    }
}

/// Attached on one thread, cleared on another (kept there), reused there by the next value.
#[test]
fn values_cleared_on_another_thread_are_reused_there_with_their_own_value() {
    let (tx, rx) = std::sync::mpsc::channel::<Envelope>();
    let consumer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for mut e in rx {
            let v = e.local.cloned::<Tick>(&e.payload).unwrap();
            seen.push(v.n);
            e.local.clear();
            // A value made on this thread, after the other thread's block was kept here.
            let mut mine = env(Tick { n: v.n + 1_000_000 });
            mine.encode_payload().unwrap();
            assert_eq!(
                &mine.payload[..],
                format!(r#"{{"n":{}}}"#, v.n + 1_000_000).as_bytes()
            );
            mine.local.clear();
        }
        seen
    });
    for n in 0..200 {
        let e = env(Tick { n });
        if n % 2 == 0 {
            // Some encoded first.
            assert_eq!(bytes(&e), format!(r#"{{"n":{n}}}"#).as_bytes());
        }
        tx.send(e).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), (0..200).collect::<Vec<_>>());
}

/// A `Shared` of a kept-block type held past its envelope's clear keeps its value: the block
/// is not reused under it.
#[test]
fn a_shared_value_outlives_its_cleared_envelope_unchanged() {
    let mut held: Vec<Shared<Tick>> = Vec::new();
    for n in 0..100 {
        let mut e = env(Tick { n });
        held.push(e.local.shared::<Tick>(&e.payload).unwrap());
        e.local.clear();
        let mut next = env(Tick { n: n + 500 });
        next.local.clear();
    }
    for (n, s) in held.iter().enumerate() {
        assert_eq!(s.n, n as u64);
    }
    // Let go of one by one: the last holder takes its value back.
    for (n, s) in held.into_iter().enumerate() {
        assert_eq!(Shared::into_inner(s).map(|t| t.n), Some(n as u64));
    }
}
