//! Shortcut 3 for envelopes a handler passes on. ARCHITECTURE.md, step 1: bytes are made
//! "only where bytes are needed: [...] an envelope passed on to a publish or send that
//! reaches another reader"; Decisions: "A value is handed over only while the payload is the
//! very buffer it was encoded to [...]: a handler that passes on a copy of its envelope with
//! a rewritten payload, even of the same length, gets it decoded downstream".

use std::sync::{Arc, Mutex};

use switchyard::{Bus, Envelope, MessageId, Outcome, Topic};

use super::Tok;

/// What the downstream subscriptions got: (who, value, payload).
type Got = Arc<Mutex<Vec<(&'static str, Tok, Vec<u8>)>>>;

/// A typed `Tok` subscription on `rev40.tok2` and a raw one on `rev40.raw2`, logging.
async fn downstream(bus: &Bus, got: &Got) -> Vec<switchyard::Subscription> {
    let g = Arc::clone(got);
    let typed = bus
        .on("rev40-down-typed", move |tok: Tok, ctx: switchyard::Ctx| {
            let g = Arc::clone(&g);
            async move {
                let bytes = ctx.envelope().payload.to_vec();
                g.lock().unwrap().push(("typed", tok, bytes));
                Ok::<_, std::io::Error>(())
            }
        })
        .pattern("rev40.tok2")
        .start()
        .await
        .unwrap();
    let g = Arc::clone(got);
    let raw = bus
        .subscribe(
            "rev40-down-raw",
            "rev40.raw2",
            switchyard::handler_fn(move |env: Envelope| {
                let g = Arc::clone(&g);
                async move {
                    let tok: Tok =
                        serde_json::from_slice(&env.payload).map_err(std::io::Error::other)?;
                    g.lock().unwrap().push(("raw", tok, env.payload.to_vec()));
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    vec![typed, raw]
}

/// A copy of `env` as a new message on `topic`.
fn passed_on(env: &Envelope, topic: &str) -> Envelope {
    let mut copy = env.clone();
    copy.id = MessageId::new();
    copy.correlation_id = copy.id.clone();
    copy.topic = Topic::new(topic).unwrap();
    copy
}

/// A lone typed handler (so its messages travel unencoded) passes on the queued envelope
/// (`delivered::current()`, payload still empty) and its own `Ctx::into_envelope()` to a
/// raw reader and to a typed reader of another topic: each gets the value and its bytes; the
/// queued envelope serialized, or made into a dead letter by hand, has its bytes too.
#[tokio::test]
async fn an_unencoded_envelope_passed_on_reaches_raw_and_typed_readers_with_its_bytes() {
    let bus = Bus::new();
    let got: Got = Arc::default();
    let _down = downstream(&bus, &got).await;
    let b = bus.clone();
    let _up = bus
        .on("rev40-up", move |tok: Tok, ctx: switchyard::Ctx| {
            let bus = b.clone();
            async move {
                let queued = switchyard::delivered::current().expect("delivered");
                // The queued envelope as it is: this message travels unencoded.
                assert!(queued.needs_encoding(), "unencoded: {queued:?}");
                // "every exit fills it (`DeadLetter::new`, `Serialize for Envelope`, ...)"
                let wire = serde_json::to_vec(&*queued).unwrap();
                let back: Envelope = serde_json::from_slice(&wire).unwrap();
                assert_eq!(
                    back.payload,
                    serde_json::to_vec(&tok).unwrap(),
                    "serialized bytes"
                );
                let letter = switchyard::DeadLetter::new(
                    Envelope::clone(&queued),
                    switchyard::DeadLetterReason::Rejected,
                    "made by hand",
                );
                assert_eq!(
                    letter.envelope.payload,
                    serde_json::to_vec(&tok).unwrap(),
                    "DeadLetter::new bytes"
                );
                bus.publish_envelope(passed_on(&queued, "rev40.raw2"))
                    .await
                    .unwrap();
                bus.publish_envelope(passed_on(&queued, "rev40.tok2"))
                    .await
                    .unwrap();
                let own = ctx.into_envelope();
                bus.publish_envelope(passed_on(&own, "rev40.raw2"))
                    .await
                    .unwrap();
                bus.publish_envelope(passed_on(&own, "rev40.tok2"))
                    .await
                    .unwrap();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "{:?}",
        bus.dead_letters().unwrap().list()
    );
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 80);
    for (who, tok, bytes) in got.iter() {
        assert_eq!(*tok, Tok::new(tok.n), "{who}");
        assert_eq!(
            bytes,
            &serde_json::to_vec(tok).unwrap(),
            "{who} saw the bytes of {tok:?}"
        );
    }
}

/// A typed handler passes on its envelope with the payload rewritten to another value of
/// the same encoded length: the typed reader downstream gets the rewritten value (decoded),
/// not the value the envelope carried beside its old bytes.
#[tokio::test]
async fn a_passed_on_envelope_with_a_rewritten_payload_of_the_same_length_is_decoded() {
    let bus = Bus::new();
    let got: Got = Arc::default();
    let _down = downstream(&bus, &got).await;
    let b = bus.clone();
    let _up = bus
        .on("rev40-rewriter", move |tok: Tok, ctx: switchyard::Ctx| {
            let bus = b.clone();
            async move {
                let mut copy = passed_on(&ctx.into_envelope(), "rev40.tok2");
                // n in 10..=19 -> 20..=29: same number of digits, same length.
                let other = Tok {
                    n: tok.n + 10,
                    text: format!("tok {}", tok.n + 10),
                };
                let bytes = serde_json::to_vec(&other).unwrap();
                assert_eq!(bytes.len(), copy.payload.len());
                copy.payload = bytes.into();
                bus.publish_envelope(copy).await.unwrap();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 10..20 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    let got = got.lock().unwrap();
    let mut ns: Vec<u64> = got.iter().map(|(_, t, _)| t.n).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (20..30).collect::<Vec<_>>(),
        "the rewritten values: {got:?}"
    );
    for (_, tok, bytes) in got.iter() {
        assert_eq!(*tok, Tok::new(tok.n));
        assert_eq!(bytes, &serde_json::to_vec(tok).unwrap());
    }
}
