//! Shortcut 2: the rare-fields box reused by replies (`RareSlot::caused`) and the reply's
//! own box (`Outcome::reply` / `Outcome::unbox`). ARCHITECTURE.md, "Memory per queued
//! message": "a reply writes just those two fields into the spare, `RareSlot::caused`";
//! "`Outcome::unbox` [...] keeps the box per thread for the next `Outcome::reply`".
//! `Envelope::reply`'s rustdoc: "A reply to this message: kind `Reply`, same topic, caused
//! by and correlated with it", `ReplyAddress::reply`: "addressed to its source".

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use switchyard::{Bus, CommandResult, Envelope, Kind, MessageId, Outcome, Topic};

use super::{Echo, Shape, Tok, shape};

#[derive(Debug, Clone)]
enum Op {
    /// A raw command; the handler replies with `reply_headers` headers, a source, a content
    /// type, or only acks.
    Send {
        source: bool,
        headers: u8,
        correlation: bool,
        reply_headers: u8,
        reply_source: bool,
        reply_content_type: bool,
        ack_only: bool,
    },
    /// A typed `send` of `Echo` whose handler sends a raw command and publishes a `Tok`.
    Typed(u64),
    /// A plain typed publish on the same thread.
    Publish(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<bool>(),
            0u8..3,
            any::<bool>(),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2)
        )
            .prop_map(
                |(
                    source,
                    headers,
                    correlation,
                    reply_headers,
                    reply_source,
                    reply_content_type,
                    ack_only,
                )| {
                    Op::Send {
                        source,
                        headers,
                        correlation,
                        reply_headers,
                        reply_source,
                        reply_content_type,
                        ack_only,
                    }
                }
            ),
        (0u64..100).prop_map(Op::Typed),
        (0u64..100).prop_map(Op::Publish),
    ]
}

fn command(op: &Op, i: usize) -> Envelope {
    let Op::Send {
        source,
        headers,
        correlation,
        reply_headers,
        reply_source,
        reply_content_type,
        ack_only,
    } = op.clone()
    else {
        unreachable!()
    };
    let mut env = Envelope::new(
        Topic::new("rev40.cmd").unwrap(),
        format!("cmd {i}").into_bytes(),
    )
    .with_kind(Kind::Command)
    .with_header("rh", reply_headers.to_string());
    for h in 0..headers {
        env = env.with_header(format!("c{h}"), format!("{i}"));
    }
    if source {
        env = env.with_source(format!("caller{i}"));
    }
    if correlation {
        env = env.with_correlation_id(MessageId::new());
    }
    if reply_source {
        env = env.with_header("rs", "1");
    }
    if reply_content_type {
        env = env.with_header("rc", "1");
    }
    if ack_only {
        env = env.with_header("ack", "1");
    }
    env
}

/// The reply the raw handler makes to `cmd` (its id and timestamp aside).
fn expected_reply(cmd: &Shape, got: &Shape) -> Shape {
    let header = |name: &str| {
        cmd.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let n: u8 = header("rh").unwrap().parse().unwrap();
    let mut headers: Vec<(String, String)> = (0..n)
        .map(|h| (format!("r{h}"), format!("for {}", cmd.id)))
        .collect();
    headers.sort();
    Shape {
        id: got.id.clone(),
        topic: cmd.topic.clone(),
        kind: Kind::Reply,
        correlation: cmd.correlation.clone(),
        causation: Some(cmd.id.clone()),
        source: header("rs").map(|_| format!("replier of {}", cmd.id)),
        target: cmd.source.clone(),
        content_type: if header("rc").is_some() {
            "text/plain".into()
        } else {
            "application/json".into()
        },
        headers,
        priority: switchyard::Priority::NORMAL.0,
        type_name: None,
        type_version: got.type_version,
        payload: [b"re: ".as_slice(), &cmd.payload].concat(),
        deadline: false,
    }
}

async fn replier(bus: &Bus) -> switchyard::Subscription {
    bus.handle_envelope(
        "rev40-replier",
        "rev40.cmd",
        switchyard::handler_fn(|env: Envelope| async move {
            if env.header("ack").is_some() {
                return Ok::<_, std::io::Error>(Outcome::Ack);
            }
            let n: u8 = env.header("rh").unwrap().parse().unwrap();
            let mut reply = env.reply([b"re: ".as_slice(), &env.payload].concat());
            for h in 0..n {
                reply = reply.with_header(format!("r{h}"), format!("for {}", env.id));
            }
            if env.header("rs").is_some() {
                reply = reply.with_source(format!("replier of {}", env.id));
            }
            if env.header("rc").is_some() {
                reply = reply.with_content_type("text/plain");
            }
            Ok(Outcome::reply(reply))
        }),
    )
    .start()
    .await
    .unwrap()
}

/// A typed command whose handler, from inside, sends a raw command and publishes a `Tok`,
/// and reports their envelopes' causation and correlation.
async fn nested_echo(
    bus: &Bus,
    inner: Arc<Mutex<Vec<(String, CommandResult)>>>,
) -> switchyard::Subscription {
    bus.handle(move |echo: Echo, ctx: switchyard::Ctx| {
        let inner = Arc::clone(&inner);
        async move {
            let me = ctx.envelope().id.to_string();
            let cmd = Envelope::new(
                Topic::new("rev40.cmd").unwrap(),
                format!("inner {}", echo.n),
            )
            .with_kind(Kind::Command)
            .with_header("rh", "1");
            let result = ctx.bus().send_envelope(cmd).await.unwrap();
            inner.lock().unwrap().push((me, result));
            ctx.publish(Tok::new(echo.n)).await.unwrap();
            Ok::<_, std::io::Error>(format!("echo {}", echo.text))
        }
    })
    .start()
    .await
    .unwrap()
}

/// Runs `ops` on `bus` from this task (`offset` keeps payloads unique between tasks): the
/// commands sent with their results, and how many `Tok`s were published.
async fn drive(
    bus: &Bus,
    ops: &[Op],
    offset: usize,
) -> Result<(Vec<(Shape, CommandResult)>, usize), TestCaseError> {
    let mut kept: Vec<(Shape, CommandResult)> = Vec::new();
    let mut published = 0;
    for (i, op) in ops.iter().enumerate() {
        let i = i + offset;
        match op {
            Op::Send { .. } => {
                let cmd = command(op, i);
                let sent = shape(&cmd);
                let result = bus.send_envelope(cmd).await.unwrap();
                kept.push((sent, result));
            }
            Op::Typed(n) => {
                let out = bus
                    .send(Echo {
                        n: *n,
                        text: format!("t{i}"),
                    })
                    .await
                    .unwrap();
                prop_assert_eq!(out, format!("echo t{i}"));
                published += 1;
            }
            Op::Publish(n) => {
                bus.publish(Tok::new(*n)).await.unwrap();
                published += 1;
            }
        }
    }
    Ok((kept, published))
}

fn run(ops: &[Op], senders: usize) -> Result<(), TestCaseError> {
    let rt = if senders == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async {
        let bus = Bus::new();
        let _replier = replier(&bus).await;
        let inner = Arc::new(Mutex::new(Vec::new()));
        let _echo = nested_echo(&bus, Arc::clone(&inner)).await;
        let toks = Arc::new(Mutex::new(Vec::new()));
        let toks2 = Arc::clone(&toks);
        let _tok = bus
            .on("rev40-tok-keeper", move |tok: Tok, ctx: switchyard::Ctx| {
                let toks = Arc::clone(&toks2);
                async move {
                    toks.lock().unwrap().push((tok, ctx.into_envelope()));
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        let (kept, published) = if senders == 1 {
            drive(&bus, ops, 0).await?
        } else {
            // Several senders at once on the runtime's threads, each with the whole sequence.
            let tasks: Vec<_> = (0..senders)
                .map(|t| {
                    let bus = bus.clone();
                    let ops = ops.to_vec();
                    tokio::spawn(async move { drive(&bus, &ops, t * 1000).await })
                })
                .collect();
            let (mut kept, mut published) = (Vec::new(), 0);
            for task in tasks {
                let (k, p) = task.await.unwrap()?;
                kept.extend(k);
                published += p;
            }
            (kept, published)
        };
        bus.run_until_idle().await;
        for (sent, result) in &kept {
            prop_assert_eq!(result.handler.as_str(), "rev40-replier");
            let ack_only = sent.headers.iter().any(|(k, _)| k == "ack");
            match &result.reply {
                None => prop_assert!(ack_only, "a reply for {:?}", sent),
                Some(reply) => {
                    prop_assert!(!ack_only);
                    let got = shape(reply);
                    prop_assert_eq!(&got, &expected_reply(sent, &got));
                }
            }
        }
        for (parent, result) in inner.lock().unwrap().iter() {
            let reply = result.reply.as_ref().unwrap();
            // The inner command's reply is caused by the inner command, correlated with the
            // outer typed command (the inner one inherited its correlation).
            prop_assert_eq!(reply.correlation_id.to_string(), parent.clone());
            prop_assert!(reply.target().is_none());
            prop_assert_eq!(reply.headers().len(), 1);
        }
        let toks = toks.lock().unwrap();
        prop_assert_eq!(toks.len(), published);
        let parents: Vec<String> = inner
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        for (_, env) in toks.iter() {
            let got = shape(env);
            prop_assert!(
                got.target.is_none() && got.source.is_none() && got.headers.is_empty(),
                "{:?}",
                got
            );
            prop_assert_eq!(&got.content_type, "application/json");
            match &got.causation {
                None => prop_assert_eq!(&got.correlation, &got.id),
                Some(cause) => {
                    prop_assert!(parents.contains(cause), "caused by an Echo: {:?}", got);
                    prop_assert_eq!(&got.correlation, cause);
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every reply (kept by its caller until the end) is caused by and correlated with its
    /// command, addressed to the command's source, and carries only the headers, source and
    /// content type its own handler gave it; a publish after a reply on the same thread
    /// carries none of them; nested sends and publishes from a handler are caused by it.
    #[test]
    fn replies_and_the_publishes_after_them_carry_only_their_own_fields(
        ops in proptest::collection::vec(op(), 1..24)
    ) {
        run(&ops, 1)?;
    }

    /// The same with three senders at once on a two-thread runtime: replies are made on
    /// one thread and taken out (`Outcome::unbox`) on another, boxes kept per thread.
    #[test]
    fn replies_stay_right_with_senders_on_several_threads(
        ops in proptest::collection::vec(op(), 1..24)
    ) {
        run(&ops, 3)?;
    }
}
