//! Shortcut 3: typed values travelling unencoded (`Local`, `Local::unencoded`,
//! `SubscriptionConfig::takes`). ARCHITECTURE.md, "The flow of one message", step 1: "every
//! typed handler of that type gets a clone of it instead of decoding, on every attempt. When
//! every subscription the publish reaches is a typed handler of its type with nothing on the
//! way that reads bytes [...] the message is not encoded at all [...] made once, for every
//! copy, only where bytes are needed: `DeadLetter::new`, the envelope's serialization,
//! `Ctx::envelope` [...]". Decisions: "each typed handler of that type gets its own clone on
//! every attempt, so a handler that changes its copy changes nothing another subscriber or a
//! retry sees". Step 5: "A payload that does not decode is dead-lettered at once with its raw
//! bytes."

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use switchyard::{Bus, DeadLetterReason, Envelope, Outcome, Shared, Topic};

use super::Tok;

#[derive(Debug, Clone, Copy)]
enum Op {
    AddRaw,
    DropRaw,
    AddFiltered,
    DropFiltered,
    AddKeyed,
    DropKeyed,
    Publish(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::AddRaw),
        Just(Op::DropRaw),
        Just(Op::AddFiltered),
        Just(Op::DropFiltered),
        Just(Op::AddKeyed),
        Just(Op::DropKeyed),
        (0u64..60).prop_map(Op::Publish),
        (0u64..60).prop_map(Op::Publish),
        (0u64..60).prop_map(Op::Publish),
    ]
}

type Log = Arc<Mutex<Vec<(&'static str, u64, String, Vec<u8>)>>>;

/// A typed handler of `Tok` that logs what it gets (and, for `n % 3 == 0`, the bytes
/// `Ctx::envelope` shows), changes its copy and fails the first attempt for `n % 4 == 0`,
/// and rejects `n % 5 == 0`.
fn typed_sub(bus: &Bus, name: &'static str, log: Log) -> switchyard::SubscriptionBuilder {
    bus.on(name, move |mut tok: Tok, ctx: switchyard::Ctx| {
        let log = Arc::clone(&log);
        async move {
            let bytes = if tok.n.is_multiple_of(3) {
                ctx.envelope().payload.to_vec()
            } else {
                Vec::new()
            };
            log.lock()
                .unwrap()
                .push((name, tok.n, tok.text.clone(), bytes));
            if tok.n.is_multiple_of(4) && ctx.attempt() == 1 {
                tok.text.push_str(" changed by the first attempt");
                return Err(std::io::Error::other("first attempt fails"));
            }
            Ok(if tok.n.is_multiple_of(5) {
                Outcome::reject("fives")
            } else {
                Outcome::Ack
            })
        }
    })
    .max_attempts(3)
    .retry_delay(Duration::ZERO)
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = Bus::new();
        let log: Log = Arc::default();
        let _typed = typed_sub(&bus, "typed", Arc::clone(&log))
            .start()
            .await
            .unwrap();
        let shared_log = Arc::clone(&log);
        let _shared = bus
            .on("shared", move |tok: Shared<Tok>, _ctx: switchyard::Ctx| {
                let log = Arc::clone(&shared_log);
                async move {
                    log.lock()
                        .unwrap()
                        .push(("shared", tok.n, tok.text.clone(), Vec::new()));
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        let (mut raw, mut filtered, mut keyed) = (None, None, None);
        let mut expected: Vec<(&'static str, u64)> = Vec::new();
        let mut rejected_by: Vec<(&'static str, u64)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::AddRaw if raw.is_none() => {
                    let log = Arc::clone(&log);
                    raw = Some(
                        bus.subscribe(
                            "raw",
                            "rev40.tok",
                            switchyard::handler_fn(move |env: Envelope| {
                                let log = Arc::clone(&log);
                                async move {
                                    let tok: Tok = serde_json::from_slice(&env.payload).unwrap();
                                    log.lock().unwrap().push((
                                        "raw",
                                        tok.n,
                                        tok.text,
                                        env.payload.to_vec(),
                                    ));
                                    Ok::<_, std::io::Error>(())
                                }
                            }),
                        )
                        .start()
                        .await
                        .unwrap(),
                    );
                }
                Op::DropRaw => raw = None,
                Op::AddFiltered if filtered.is_none() => {
                    filtered = Some(
                        typed_sub(&bus, "filtered", Arc::clone(&log))
                            .filter(|env: &Envelope| env.payload.len() < 10_000)
                            .start()
                            .await
                            .unwrap(),
                    );
                }
                Op::DropFiltered => filtered = None,
                Op::AddKeyed if keyed.is_none() => {
                    keyed = Some(
                        typed_sub(&bus, "keyed", Arc::clone(&log))
                            .ordering_key(|env: &Envelope| {
                                Some(env.payload.len().to_string().into())
                            })
                            .workers(2)
                            .start()
                            .await
                            .unwrap(),
                    );
                }
                Op::DropKeyed => keyed = None,
                Op::Publish(n) => {
                    let n = n + 100 * i as u64;
                    let reached: Vec<&'static str> = [
                        Some("typed"),
                        Some("shared"),
                        raw.as_ref().map(|_| "raw"),
                        filtered.as_ref().map(|_| "filtered"),
                        keyed.as_ref().map(|_| "keyed"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    for name in reached {
                        let typed = matches!(name, "typed" | "filtered" | "keyed");
                        expected.push((name, n));
                        if typed && n.is_multiple_of(4) {
                            expected.push((name, n)); // the retry
                        }
                        if typed && n.is_multiple_of(5) {
                            rejected_by.push((name, n));
                        }
                    }
                    bus.publish(Tok::new(n)).await.unwrap();
                }
                _ => {}
            }
            bus.run_until_idle().await;
        }
        let log = log.lock().unwrap();
        let mut got: Vec<(&'static str, u64)> = log.iter().map(|(s, n, _, _)| (*s, *n)).collect();
        got.sort();
        expected.sort();
        prop_assert_eq!(
            got,
            expected,
            "every subscription that exists at publish time gets it"
        );
        for (name, n, text, bytes) in log.iter() {
            prop_assert_eq!(
                text,
                &format!("tok {n}"),
                "{} got the value as published (every attempt)",
                name
            );
            if *name == "raw" || (n % 3 == 0 && *name != "shared") {
                prop_assert_eq!(
                    bytes,
                    &serde_json::to_vec(&Tok::new(*n)).unwrap(),
                    "{} saw the value's bytes",
                    name
                );
            }
        }
        let letters = bus.dead_letters().unwrap().list();
        let mut dead: Vec<(String, u64)> = Vec::new();
        for letter in &letters {
            prop_assert_eq!(letter.reason, DeadLetterReason::Rejected);
            let tok: Tok = serde_json::from_slice(&letter.envelope.payload).map_err(|e| {
                TestCaseError::fail(format!("a dead letter holds the encoded bytes: {e}"))
            })?;
            prop_assert_eq!(
                &letter.envelope.payload[..],
                &serde_json::to_vec(&tok).unwrap()[..]
            );
            dead.push((letter.handler.as_deref().unwrap_or("?").to_owned(), tok.n));
        }
        dead.sort();
        let mut want: Vec<(String, u64)> = rejected_by
            .iter()
            .map(|(s, n)| ((*s).to_owned(), *n))
            .collect();
        want.sort();
        prop_assert_eq!(dead, want);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Raw, filtered and keyed subscribers come and go between typed publishes: each
    /// subscription present at publish time gets the message once (twice with its retry),
    /// typed ones the value as published on every attempt, raw ones and `Ctx::envelope` its
    /// JSON bytes, and every dead letter holds the encoded bytes.
    #[test]
    fn typed_values_and_their_bytes_stay_right_as_subscribers_come_and_go(
        ops in proptest::collection::vec(op(), 1..30)
    ) {
        run(&ops)?;
    }
}

/// Step 5: "A payload that does not decode is dead-lettered at once with its raw bytes." A
/// raw envelope with bad bytes published between typed publishes (which travel unencoded to
/// the same typed handler) dead-letters with those bytes, and the typed publishes around it
/// arrive intact.
#[tokio::test]
async fn bad_bytes_to_a_typed_handler_dead_letter_as_sent_between_unencoded_publishes() {
    let bus = Bus::new();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = Arc::clone(&got);
    let _sub = bus
        .on("rev40-decode", move |tok: Tok, _ctx: switchyard::Ctx| {
            let got = Arc::clone(&got2);
            async move {
                got.lock().unwrap().push(tok);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let mut bad_ids = Vec::new();
    for i in 0..20u64 {
        bus.publish(Tok::new(i)).await.unwrap();
        let mut bad = Envelope::new(
            Topic::new("rev40.tok").unwrap(),
            format!("{{\"n\": \"not a number {i}\"}}").into_bytes(),
        );
        bad.type_name = Some(<Tok as switchyard::Message>::type_name().into());
        bad_ids.push((bad.id.clone(), bad.payload.clone()));
        bus.publish_envelope(bad).await.unwrap();
    }
    bus.run_until_idle().await;
    assert_eq!(
        *got.lock().unwrap(),
        (0..20).map(Tok::new).collect::<Vec<_>>()
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 20);
    for (id, bytes) in bad_ids {
        let letter = letters
            .iter()
            .find(|l| l.envelope.id == id)
            .expect("dead-lettered");
        assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(letter.envelope.payload, bytes, "the raw bytes as published");
    }
}

/// Decisions: "the value is attached only when no publish hook ran (a hook may rewrite the
/// payload)". A hook that rewrites the payload of every other typed publish: typed handlers
/// get what the bytes say (the hook's value), never the value published before the hook.
#[tokio::test]
async fn a_publish_hook_that_rewrites_the_payload_is_what_typed_handlers_get() {
    let bus = Bus::builder()
        .publish_hook(|env: &mut Envelope| {
            if let Ok(mut tok) = serde_json::from_slice::<Tok>(&env.payload)
                && tok.n % 2 == 0
            {
                tok.text = format!("hooked {}", tok.n);
                env.payload = serde_json::to_vec(&tok).unwrap().into();
            }
            Ok(())
        })
        .build()
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = Arc::clone(&got);
    let _sub = bus
        .on("rev40-hooked", move |tok: Tok, _ctx: switchyard::Ctx| {
            let got = Arc::clone(&got2);
            async move {
                got.lock().unwrap().push(tok);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    for i in 0..10u64 {
        bus.publish(Tok::new(i)).await.unwrap();
    }
    bus.run_until_idle().await;
    let want: Vec<Tok> = (0..10u64)
        .map(|n| Tok {
            n,
            text: if n % 2 == 0 {
                format!("hooked {n}")
            } else {
                format!("tok {n}")
            },
        })
        .collect();
    assert_eq!(*got.lock().unwrap(), want);
}
