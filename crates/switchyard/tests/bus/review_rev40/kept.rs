//! Shortcut 1 with envelopes a handler keeps as the bus queued them
//! (`switchyard::delivered::current()`): a block someone else holds is not reused.

use std::sync::{Arc, Mutex};

use switchyard::{Bus, Envelope, Outcome};

use super::reuse::{Op, raw_envelope, typed_expected};
use super::{Shape, Tok, shape};

/// `switchyard::delivered::current()` "gives middleware and handlers the queued envelope as
/// it is" (Decisions, "Typed messages are encoded only when something reads bytes"), an
/// `Arc` the handler may keep. A kept queued envelope is held by someone else, so its block
/// is never written with a later message ("when nothing else holds it"); an unencoded one
/// still makes its bytes (`Envelope::encode_payload`) from its own value later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_envelopes_a_handler_keeps_are_never_rewritten_by_later_publishes() {
    let bus = Bus::new();
    type Kept = Arc<Mutex<Vec<Arc<Envelope>>>>;
    let raw_kept: Kept = Arc::default();
    let typed_kept: Kept = Arc::default();
    let raw2 = Arc::clone(&raw_kept);
    let _raw = bus
        .subscribe(
            "rev40-current-raw",
            "rev40.raw",
            switchyard::handler_fn(move |_env: Envelope| {
                let kept = Arc::clone(&raw2);
                async move {
                    let current = switchyard::delivered::current().expect("in a delivered scope");
                    kept.lock().unwrap().push(current);
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let typed2 = Arc::clone(&typed_kept);
    let _typed = bus
        .on(
            "rev40-current-typed",
            move |_tok: Tok, _ctx: switchyard::Ctx| {
                let kept = Arc::clone(&typed2);
                async move {
                    let current = switchyard::delivered::current().expect("in a delivered scope");
                    kept.lock().unwrap().push(current);
                    Ok::<_, std::io::Error>(())
                }
            },
        )
        .start()
        .await
        .unwrap();
    let mut raw_want = Vec::new();
    for i in 0..300usize {
        let op = Op::Env {
            headers: (i % 4) as u8,
            source: i % 3 == 0,
            target: i % 5 == 0,
            content_type: i % 2 == 0,
            priority: (i % 10) as u8,
            causation: i % 6 == 0,
            correlation: i % 7 == 0,
            reject: false,
        };
        let env = raw_envelope(&op, i);
        raw_want.push(shape(&env));
        bus.publish_envelope(env).await.unwrap();
        bus.publish(Tok::new(i as u64)).await.unwrap();
        if i % 10 == 0 {
            bus.run_until_idle().await;
        }
    }
    bus.run_until_idle().await;
    // More publishes after everything settled: blocks go round the recycle lists again.
    for i in 0..300u64 {
        bus.publish(Tok::new(10_000 + i)).await.unwrap();
    }
    bus.run_until_idle().await;
    let raw_kept = raw_kept.lock().unwrap();
    assert_eq!(raw_kept.len(), 300);
    let mut got: Vec<Shape> = raw_kept.iter().map(|e| shape(e)).collect();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    raw_want.sort_by(|a, b| a.id.cmp(&b.id));
    for (mut g, w) in got.into_iter().zip(&raw_want) {
        g.deadline = w.deadline;
        assert_eq!(&g, w);
    }
    let typed_kept = typed_kept.lock().unwrap();
    assert_eq!(typed_kept.len(), 600);
    let mut ns: Vec<u64> = Vec::new();
    for kept in typed_kept.iter() {
        let mut copy = Envelope::clone(kept);
        copy.encode_payload().unwrap();
        let tok: Tok = serde_json::from_slice(&copy.payload)
            .unwrap_or_else(|e| panic!("a kept typed envelope makes its bytes ({e}): {copy:?}"));
        assert_eq!(tok, Tok::new(tok.n));
        let got = shape(&copy);
        assert_eq!(got, typed_expected(&tok, &got));
        ns.push(tok.n);
    }
    ns.sort_unstable();
    let want: Vec<u64> = (0..300).chain(10_000..10_300).collect();
    assert_eq!(ns, want, "each kept envelope is its own message");
}
