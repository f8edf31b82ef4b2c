//! Shortcut 1: the envelope block reuse (`queue/spare.rs`) and the rare-fields box kept per
//! thread (`envelope/rare.rs`). ARCHITECTURE.md, "The flow of one message", step 6:
//! "Settled envelopes are freed on a publisher's thread (a bounded recycle list) [...] the
//! thread's next publish writes its envelope into that block when nothing else holds it";
//! "Memory per queued message": "a dropped box is emptied and kept, one per thread, for the
//! next". A reused block or box must never show a field of the message it held before.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use switchyard::{Bus, DeadLetterReason, Envelope, MessageId, Outcome, Priority, Topic};

use super::{Shape, Tok, shape};

/// One publish of the sequence.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// `publish_envelope` on `rev40.raw` with these rare fields (`reject`: dead-lettered).
    Env {
        headers: u8,
        source: bool,
        target: bool,
        content_type: bool,
        priority: u8,
        causation: bool,
        correlation: bool,
        reject: bool,
    },
    /// A typed `Tok` (odd ones are rejected by the typed handler).
    Typed(u64),
    /// A raw message whose handler publishes a `Tok` (caused by it) from inside.
    Nested(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u8..10,
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(
                    headers,
                    source,
                    target,
                    content_type,
                    priority,
                    causation,
                    correlation,
                    reject,
                )| {
                    Op::Env {
                        headers,
                        source,
                        target,
                        content_type,
                        priority,
                        causation,
                        correlation,
                        reject,
                    }
                }
            ),
        (0u64..1000).prop_map(Op::Typed),
        (0u64..1000).prop_map(Op::Nested),
    ]
}

/// The envelope `Op::Env` publishes (`i` makes its payload unique).
pub(super) fn raw_envelope(op: &Op, i: usize) -> Envelope {
    let Op::Env {
        headers,
        source,
        target,
        content_type,
        priority,
        causation,
        correlation,
        reject,
    } = op.clone()
    else {
        unreachable!()
    };
    let mut env = Envelope::new(
        Topic::new("rev40.raw").unwrap(),
        format!("raw {i}").into_bytes(),
    );
    for h in 0..headers {
        env = env.with_header(format!("h{h}"), format!("v{i}.{h}"));
    }
    if reject {
        env = env.with_header("reject", "yes");
    }
    if source {
        env = env.with_source(format!("src{i}"));
    }
    if target {
        env = env.with_target(format!("tgt{i}"));
    }
    if content_type {
        env = env.with_content_type(format!("text/x-{i}"));
    }
    if causation {
        env.set_causation_id(Some(MessageId::new()));
    }
    if correlation {
        env = env.with_correlation_id(MessageId::new());
    }
    env.with_priority(Priority(priority))
}

/// What every handler saw and kept, by topic.
#[derive(Default)]
struct Seen {
    raw: Vec<Envelope>,
    typed: Vec<(Tok, Envelope)>,
    /// `(n, the Nest's id)` for each nested publish.
    parents: Vec<(u64, String)>,
}

/// A typed event whose handler publishes `Tok::new(n)` from inside.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Nest {
    n: u64,
}
impl switchyard::Message for Nest {
    const TOPIC: &'static str = "rev40.nest";
}

async fn bus_with_keepers(seen: Arc<Mutex<Seen>>) -> (Bus, Vec<switchyard::Subscription>) {
    let bus = Bus::builder()
        .retry_delay(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let raw_seen = Arc::clone(&seen);
    let raw = bus
        .subscribe(
            "rev40-raw-keeper",
            "rev40.raw",
            switchyard::handler_fn(move |env: Envelope| {
                let seen = Arc::clone(&raw_seen);
                async move {
                    let reject = env.header("reject").is_some();
                    seen.lock().unwrap().raw.push(env.clone());
                    Ok::<_, std::io::Error>(if reject {
                        Outcome::reject("asked to")
                    } else {
                        Outcome::Ack
                    })
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let typed_seen = Arc::clone(&seen);
    let typed = bus
        .on(
            "rev40-typed-keeper",
            move |tok: Tok, ctx: switchyard::Ctx| {
                let seen = Arc::clone(&typed_seen);
                async move {
                    let odd = tok.n % 2 == 1;
                    seen.lock().unwrap().typed.push((tok, ctx.into_envelope()));
                    Ok::<_, std::io::Error>(if odd {
                        Outcome::reject("odd")
                    } else {
                        Outcome::Ack
                    })
                }
            },
        )
        .start()
        .await
        .unwrap();
    let nest_seen = Arc::clone(&seen);
    let nest = bus
        .on("rev40-nester", move |nest: Nest, ctx: switchyard::Ctx| {
            let seen = Arc::clone(&nest_seen);
            async move {
                seen.lock()
                    .unwrap()
                    .parents
                    .push((nest.n, ctx.correlation_id().to_string()));
                ctx.publish(Tok::new(nest.n)).await.unwrap();
                Ok::<_, std::io::Error>(Outcome::Ack)
            }
        })
        .start()
        .await
        .unwrap();
    (bus, vec![raw, typed, nest])
}

/// What a typed top-level publish of `tok` must look like to its handler.
pub(super) fn typed_expected(tok: &Tok, got: &Shape) -> Shape {
    Shape {
        id: got.id.clone(),
        topic: "rev40.tok".into(),
        kind: switchyard::Kind::Event,
        correlation: got.id.clone(),
        causation: None,
        source: None,
        target: None,
        content_type: "application/json".into(),
        headers: vec![],
        priority: Priority::NORMAL.0,
        type_name: got.type_name.clone(),
        type_version: 1,
        payload: serde_json::to_vec(tok).unwrap(),
        deadline: false,
    }
}

/// Runs `ops` on a current-thread runtime (so every publish, handler and settle shares one
/// thread and its kept block and box) and checks every envelope seen.
fn run_sequence(ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (bus, _subs) = bus_with_keepers(Arc::clone(&seen)).await;
        let mut raw_expected: Vec<Shape> = Vec::new();
        let mut typed_expected_toks: Vec<Tok> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Env { .. } => {
                    let env = raw_envelope(op, i);
                    raw_expected.push(shape(&env));
                    bus.publish_envelope(env).await.unwrap();
                }
                Op::Typed(n) => {
                    let tok = super::Tok::new(*n * 1000 + i as u64);
                    typed_expected_toks.push(tok.clone());
                    bus.publish(tok).await.unwrap();
                }
                Op::Nested(n) => {
                    let n = *n * 1000 + i as u64 + 1_000_000;
                    typed_expected_toks.push(super::Tok::new(n));
                    bus.publish(Nest { n }).await.unwrap();
                }
            }
            bus.run_until_idle().await;
        }
        let seen = seen.lock().unwrap();
        prop_assert_eq!(seen.raw.len(), raw_expected.len());
        for (got, want) in seen.raw.iter().zip(&raw_expected) {
            let got = shape(got);
            prop_assert_eq!(&got, want);
        }
        prop_assert_eq!(seen.typed.len(), typed_expected_toks.len());
        for ((tok, env), want) in seen.typed.iter().zip(&typed_expected_toks) {
            prop_assert_eq!(tok, want);
            let got = shape(env);
            if tok.n >= 1_000_000 {
                let parent = seen
                    .parents
                    .iter()
                    .find(|(n, _)| *n == tok.n)
                    .map(|(_, p)| p.clone());
                prop_assert!(parent.is_some());
                let mut want = typed_expected(tok, &got);
                want.causation = parent.clone();
                want.correlation = parent.unwrap();
                prop_assert_eq!(&got, &want);
                continue;
            }
            prop_assert_eq!(&got, &typed_expected(tok, &got));
        }
        // Dead letters: the rejected ones, each exactly as published.
        let letters = bus.dead_letters().unwrap().list();
        let rejected_raw: Vec<&Shape> = raw_expected
            .iter()
            .filter(|s| s.headers.iter().any(|(k, _)| k == "reject"))
            .collect();
        let rejected_typed: Vec<&Tok> = typed_expected_toks
            .iter()
            .filter(|t| t.n % 2 == 1)
            .collect();
        prop_assert_eq!(letters.len(), rejected_raw.len() + rejected_typed.len());
        for letter in &letters {
            prop_assert_eq!(letter.reason, DeadLetterReason::Rejected);
            let got = shape(&letter.envelope);
            if let Some(want) = rejected_raw.iter().find(|s| s.id == got.id) {
                prop_assert_eq!(&got, *want);
            } else {
                let tok: Tok = serde_json::from_slice(&got.payload)
                    .map_err(|e| TestCaseError::fail(format!("dead letter bytes: {e}: {got:?}")))?;
                prop_assert!(rejected_typed.contains(&&tok), "{:?}", tok);
                if tok.n < 1_000_000 {
                    prop_assert_eq!(&got, &typed_expected(&tok, &got));
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every envelope a handler keeps (`Ctx::into_envelope`, clones in a `Vec`) and every dead
    /// letter is exactly the message published, whatever the earlier messages on the thread
    /// carried (headers, source, target, causation, correlation, content type, priority).
    #[test]
    fn every_message_carries_only_its_own_fields_after_many_shapes(
        ops in proptest::collection::vec(op(), 1..24)
    ) {
        run_sequence(&ops)?;
    }
}

/// The same promise across threads: publishers on three threads of their own (each with its
/// kept block and box) and handlers on the runtime's workers, which settle messages (and so
/// hand blocks back) on whichever thread they run; every envelope a handler keeps and every
/// dead letter is the message published, field for field.
#[test]
fn publishers_on_several_threads_never_see_each_others_fields() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (bus, _subs) = rt.block_on(bus_with_keepers(Arc::clone(&seen)));
    let kinds = [
        Op::Env {
            headers: 3,
            source: true,
            target: true,
            content_type: true,
            priority: 9,
            causation: true,
            correlation: true,
            reject: false,
        },
        Op::Env {
            headers: 0,
            source: false,
            target: false,
            content_type: false,
            priority: 0,
            causation: false,
            correlation: false,
            reject: false,
        },
        Op::Env {
            headers: 1,
            source: false,
            target: true,
            content_type: false,
            priority: 5,
            causation: false,
            correlation: false,
            reject: true,
        },
        Op::Typed(0),
        Op::Typed(1),
    ];
    let expected = Arc::new(Mutex::new((Vec::<Shape>::new(), Vec::<Tok>::new())));
    let threads: Vec<_> = (0..3usize)
        .map(|t| {
            let bus = bus.clone();
            let handle = rt.handle().clone();
            let kinds = kinds.clone();
            let expected = Arc::clone(&expected);
            std::thread::spawn(move || {
                handle.block_on(async move {
                    for i in 0..300usize {
                        let op = &kinds[(i + t) % kinds.len()];
                        let unique = t * 100_000 + i;
                        match op {
                            Op::Env { .. } => {
                                let env = raw_envelope(op, unique);
                                expected.lock().unwrap().0.push(shape(&env));
                                bus.publish_envelope(env).await.unwrap();
                            }
                            Op::Typed(odd) => {
                                let tok = Tok::new((unique as u64) * 2 + odd);
                                expected.lock().unwrap().1.push(tok.clone());
                                bus.publish(tok).await.unwrap();
                            }
                            Op::Nested(_) => unreachable!(),
                        }
                        if i % 7 == 0 {
                            bus.run_until_idle().await;
                        }
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rt.block_on(bus.run_until_idle());
    let (raw_expected, toks) = &*expected.lock().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.raw.len(), raw_expected.len());
    let mut raw_got: Vec<Shape> = seen.raw.iter().map(shape).collect();
    let mut raw_want = raw_expected.clone();
    raw_got.sort_by(|a, b| a.id.cmp(&b.id));
    raw_want.sort_by(|a, b| a.id.cmp(&b.id));
    for (got, want) in raw_got.iter().zip(&raw_want) {
        assert_eq!(got, want);
    }
    assert_eq!(seen.typed.len(), toks.len());
    for (tok, env) in &seen.typed {
        assert!(toks.contains(tok), "{tok:?} was published");
        let got = shape(env);
        assert_eq!(got, typed_expected(tok, &got));
    }
    let letters = bus.dead_letters().unwrap().list();
    let raw_rejected = raw_want
        .iter()
        .filter(|s| s.headers.iter().any(|(k, _)| k == "reject"))
        .count();
    let typed_rejected = toks.iter().filter(|t| t.n % 2 == 1).count();
    assert_eq!(letters.len(), raw_rejected + typed_rejected);
    for letter in letters {
        let got = shape(&letter.envelope);
        if got.topic == "rev40.raw" {
            let want = raw_want.iter().find(|s| s.id == got.id).expect("published");
            assert_eq!(&got, want);
        } else {
            let tok: Tok = serde_json::from_slice(&got.payload).unwrap();
            assert_eq!(got, typed_expected(&tok, &got));
        }
    }
}

/// docs/bus.md / rustdoc of `publish_envelope`: an envelope "published again gets the
/// subscriptions' full attempts (its id, correlation, causation, headers and payload are
/// kept)". A dead letter replayed after hundreds of other publishes on the thread (whose
/// blocks and boxes it may be written into) comes back as the message that died.
#[tokio::test]
async fn a_replayed_dead_letter_is_the_message_that_died_after_many_publishes() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (bus, _subs) = bus_with_keepers(Arc::clone(&seen)).await;
    let mut rejected = Vec::new();
    for i in 0..200usize {
        let op = Op::Env {
            headers: (i % 4) as u8,
            source: i % 3 == 0,
            target: i % 5 == 0,
            content_type: i % 2 == 0,
            priority: (i % 10) as u8,
            causation: i % 6 == 0,
            correlation: i % 7 == 0,
            reject: i % 9 == 0,
        };
        let env = raw_envelope(&op, i);
        if i % 9 == 0 {
            rejected.push(shape(&env));
        }
        bus.publish_envelope(env).await.unwrap();
        bus.publish(Tok::new(2 * i as u64)).await.unwrap();
    }
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().drain();
    assert_eq!(letters.len(), rejected.len());
    seen.lock().unwrap().raw.clear();
    for letter in letters {
        // Replay without the reject header, so it is handled this time.
        let mut env = letter.envelope;
        env.headers_mut().remove("reject");
        bus.publish_envelope(env).await.unwrap();
        for i in 0..3 {
            bus.publish(Tok::new(2 * i)).await.unwrap();
        }
    }
    bus.run_until_idle().await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.raw.len(), rejected.len());
    for env in &seen.raw {
        let got = shape(env);
        let mut want = rejected.iter().find(|s| s.id == got.id).unwrap().clone();
        want.headers.retain(|(k, _)| k != "reject");
        assert_eq!(got, want);
        assert_eq!(
            env.delivery.attempt, 1,
            "a replay starts its attempts afresh"
        );
    }
}
