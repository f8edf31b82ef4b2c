//! Shortcut 3, the exits of an unencoded message. ARCHITECTURE.md, step 1: the payload "is
//! made once, for every copy, only where bytes are needed: `DeadLetter::new`, [...]"; Decisions:
//! "every exit fills it (`DeadLetter::new`, [...])". A typed message that reached only a
//! typed handler (so it travels unencoded) and leaves by the other doors: evicted by
//! `DropOldest`, left at shutdown. Each dead letter must hold the message's encoded bytes.
//! (A typed handler that is not ready has a layer, and a layer reads bytes: such a message is
//! encoded at publish, so "given up when its subscription is dropped" has no unencoded case.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{Bus, DeadLetterReason, Overflow};
use tokio::sync::Semaphore;

use super::Tok;
use crate::until;

fn assert_holds_bytes(letter: &switchyard::DeadLetter, reason: DeadLetterReason) -> Tok {
    assert_eq!(letter.reason, reason, "{letter:?}");
    let tok: Tok = serde_json::from_slice(&letter.envelope.payload)
        .unwrap_or_else(|e| panic!("dead letter without the encoded bytes ({e}): {letter:?}"));
    assert_eq!(
        &letter.envelope.payload[..],
        &serde_json::to_vec(&tok).unwrap()[..]
    );
    assert_eq!(tok, Tok::new(tok.n), "the value as published");
    tok
}

/// A typed handler that waits for a permit of `gate`, logging what it got.
async fn gated(
    bus: &Bus,
    gate: Arc<Semaphore>,
    got: Arc<Mutex<Vec<u64>>>,
) -> switchyard::SubscriptionBuilder {
    bus.on("rev40-exits", move |tok: Tok, _ctx: switchyard::Ctx| {
        let gate = Arc::clone(&gate);
        let got = Arc::clone(&got);
        async move {
            got.lock().unwrap().push(tok.n);
            gate.acquire().await.unwrap().forget();
            Ok::<_, std::io::Error>(())
        }
    })
}

/// `DropOldest` evicts unencoded typed messages into the dead-letter store with their bytes.
#[tokio::test]
async fn an_unencoded_message_evicted_by_drop_oldest_is_dead_lettered_with_its_bytes() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let got = Arc::new(Mutex::new(Vec::new()));
    let _sub = gated(&bus, Arc::clone(&gate), Arc::clone(&got))
        .await
        .queue_capacity(2)
        .overflow(Overflow::DropOldest)
        .start()
        .await
        .unwrap();
    bus.publish(Tok::new(0)).await.unwrap();
    until("the first is in the handler", || {
        got.lock().unwrap().len() == 1
    })
    .await;
    for n in 1..8 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    gate.add_permits(100);
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    let mut dead: Vec<u64> = letters
        .iter()
        .map(|l| assert_holds_bytes(l, DeadLetterReason::Dropped).n)
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, vec![1, 2, 3, 4, 5]);
    assert_eq!(*got.lock().unwrap(), vec![0, 6, 7]);
}

/// Messages still held or queued at a shutdown's deadline are named in `left` and
/// dead-lettered `Shutdown` (ARCHITECTURE.md, Invariants), with their bytes.
#[tokio::test]
async fn unencoded_messages_left_at_shutdown_are_dead_lettered_with_their_bytes() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let got = Arc::new(Mutex::new(Vec::new()));
    let _sub = gated(&bus, Arc::clone(&gate), Arc::clone(&got))
        .await
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    until("the first is in the handler", || {
        got.lock().unwrap().len() == 1
    })
    .await;
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(report.left.len(), 5, "{report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 5);
    let mut dead: Vec<u64> = letters
        .iter()
        .map(|l| assert_holds_bytes(l, DeadLetterReason::Shutdown).n)
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, vec![0, 1, 2, 3, 4]);
}

/// `publish_batch` takes the same typed path: every value arrives as published, to a typed
/// handler alone and, after a raw subscriber joins, with the bytes the raw one reads.
#[tokio::test]
async fn a_typed_batch_arrives_value_for_value_with_and_without_a_raw_reader() {
    let bus = Bus::new();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = Arc::clone(&got);
    let _typed = bus
        .on("rev40-batch", move |tok: Tok, _ctx: switchyard::Ctx| {
            let got = Arc::clone(&got2);
            async move {
                got.lock().unwrap().push(tok);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.publish_batch((0..50).map(Tok::new)).await.unwrap(), 50);
    bus.run_until_idle().await;
    let raw_got = Arc::new(Mutex::new(Vec::new()));
    let raw_got2 = Arc::clone(&raw_got);
    let _raw = bus
        .subscribe(
            "rev40-batch-raw",
            "rev40.tok",
            switchyard::handler_fn(move |env: switchyard::Envelope| {
                let got = Arc::clone(&raw_got2);
                async move {
                    got.lock()
                        .unwrap()
                        .push(serde_json::from_slice::<Tok>(&env.payload).unwrap());
                    Ok::<_, std::io::Error>(())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(
        bus.publish_batch((50..100).map(Tok::new)).await.unwrap(),
        50
    );
    bus.run_until_idle().await;
    let mut typed = got.lock().unwrap().clone();
    typed.sort_by_key(|t| t.n);
    assert_eq!(typed, (0..100).map(Tok::new).collect::<Vec<_>>());
    let mut raw = raw_got.lock().unwrap().clone();
    raw.sort_by_key(|t| t.n);
    assert_eq!(raw, (50..100).map(Tok::new).collect::<Vec<_>>());
}
