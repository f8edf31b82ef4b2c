//! Runs a sequence of operations against a real bus and checks it against the model.

use std::collections::HashMap;
use std::time::Duration;

use switchyard::{Bus, Envelope, PublishError, Subscription, Topic};

use super::model::{
    self, Behaviour, Op, PATTERNS, Published, QueueKind, Rec, SubModel, TOPICS, matches,
};

/// Where the bus runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    /// `Bus::new()`-like, paused clock.
    Memory,
    /// The embedded log in a temp dir, real clock.
    Log,
}

struct Live {
    name: String,
    pattern: usize,
    group: bool,
    handle: Subscription,
    op: Op,
}

/// Starts the subscription (or group member) `op` describes, named `name`.
async fn start(
    bus: &Bus,
    rec: &Rec,
    name: &str,
    op: &Op,
    log: bool,
) -> Result<Subscription, String> {
    let retry = Duration::from_millis(if log { 2 } else { 100 });
    let b = match op {
        Op::Subscribe {
            pattern,
            behaviour,
            keyed,
            workers,
            queue,
        } => {
            let h = model::event_handler(
                rec.clone(),
                name.to_owned(),
                *behaviour,
                *keyed,
                Some(*workers),
            );
            let mut b = bus
                .subscribe(name, PATTERNS[*pattern], h)
                .workers(*workers)
                .max_attempts(model::MAX_ATTEMPTS)
                .retry_delay(retry);
            if let Some((cap, o)) = model::overflow(*queue) {
                b = b.queue_capacity(cap).overflow(o);
            }
            if *keyed {
                b = b.ordering_header("key");
            }
            b
        }
        Op::Join(group) => {
            // `g0` succeeds, unkeyed; `g1` is `Mixed` and keyed
            let (behaviour, keyed) = if *group == 0 {
                (Behaviour::Ok, false)
            } else {
                (Behaviour::Mixed, true)
            };
            let h = model::event_handler(rec.clone(), name.to_owned(), behaviour, keyed, None);
            let mut b = bus
                .subscribe(name, "rev28.#", h)
                .max_attempts(model::MAX_ATTEMPTS)
                .retry_delay(retry);
            if keyed {
                b = b.ordering_header("key");
            }
            b
        }
        other => return Err(format!("not a subscription: {other:?}")),
    };
    b.start()
        .await
        .map_err(|e| format!("subscribe {name}: {e}"))
}

/// Waits (at most 20 s) until every owed pair is handled or has a dead letter in `letters`
/// or on `bus`.
async fn settle(
    bus: &Bus,
    rec: &Rec,
    msgs: &[Published],
    earlier: &[switchyard::DeadLetter],
) -> bool {
    let settled = || {
        let mut letters = model::letters(bus);
        letters.extend_from_slice(earlier);
        let s = rec.lock().unwrap();
        msgs.iter().all(|m| {
            m.owed.iter().all(|n| {
                s.oks.contains_key(&(n.clone(), m.seq))
                    || s.oks_before.contains_key(&(n.clone(), m.seq))
                    || letters
                        .iter()
                        .any(|l| l.envelope.id == m.id && l.handler.as_deref() == Some(n))
            })
        })
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while !settled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

/// Runs `ops` on `bus`, then shuts it down with `shutdown_ms`, and checks everything.
pub async fn run(
    bus: Bus,
    backend: Backend,
    ops: &[Op],
    shutdown_ms: u64,
    slow: u64,
    restart: Option<&dyn Fn() -> Bus>,
) -> Result<(), String> {
    let log = backend == Backend::Log;
    let rec = Rec::default();
    let _cmd = bus
        .handle_envelope(
            "cmd",
            "math.double",
            model::command_handler(rec.clone(), slow),
        )
        .max_attempts(model::MAX_ATTEMPTS)
        .retry_delay(Duration::from_millis(if log { 2 } else { 100 }))
        .start()
        .await
        .map_err(|e| format!("command handler: {e}"))?;
    let mut live: Vec<Live> = Vec::new();
    let mut subs: HashMap<String, SubModel> = HashMap::new();
    // every (name, pattern, group) ever subscribed, to compute what the log owes at the end
    let mut ever: Vec<(String, usize)> = Vec::new();
    let mut msgs: Vec<Published> = Vec::new();
    let mut refused: HashMap<String, u64> = HashMap::new();
    let mut problems: Vec<String> = Vec::new();
    let (mut seq, mut cmd_seq, mut next_sub) = (0u64, 0u64, 0usize);
    for op in ops {
        match op {
            Op::Subscribe {
                pattern,
                behaviour,
                keyed: _,
                workers: _,
                queue,
            } => {
                let name = format!("s{next_sub}");
                next_sub += 1;
                let handle = start(&bus, &rec, &name, op, log).await?;
                subs.insert(
                    name.clone(),
                    SubModel {
                        behaviour: *behaviour,
                        queue: *queue,
                        dropped: false,
                    },
                );
                ever.push((name.clone(), *pattern));
                live.push(Live {
                    name,
                    pattern: *pattern,
                    group: false,
                    handle,
                    op: op.clone(),
                });
            }
            Op::Join(group) => {
                let name = format!("g{group}");
                let behaviour = if *group == 0 {
                    Behaviour::Ok
                } else {
                    Behaviour::Mixed
                };
                let handle = start(&bus, &rec, &name, op, log).await?;
                subs.insert(
                    name.clone(),
                    SubModel {
                        behaviour,
                        queue: QueueKind::Default,
                        dropped: false,
                    },
                );
                if !ever.iter().any(|(n, _)| n == &name) {
                    ever.push((name.clone(), 2));
                }
                live.push(Live {
                    name,
                    pattern: 2,
                    group: true,
                    handle,
                    op: op.clone(),
                });
            }
            Op::Drop(i) => {
                if !live.is_empty() {
                    let gone = live.remove(i.index(live.len()));
                    if !gone.group || !live.iter().any(|l| l.name == gone.name) {
                        subs.get_mut(&gone.name).unwrap().dropped = true;
                    }
                    drop(gone.handle);
                }
            }
            Op::Publish { topic, key, count } => {
                for _ in 0..*count {
                    let payload = model::payload(seq);
                    let mut env =
                        Envelope::new(Topic::new(TOPICS[*topic]).unwrap(), payload.clone());
                    if let Some(k) = key {
                        // `key` for the subscription's ordering, `ordering-key` for the
                        // log's (per key across a group's members: docs/bus.md)
                        env = env
                            .with_header("key", format!("k{k}"))
                            .with_header("ordering-key", format!("k{k}"));
                    }
                    let id = env.id.clone();
                    let mut owed: Vec<String> = if log {
                        Vec::new() // computed at the end: the log keeps every message
                    } else {
                        live.iter()
                            .filter(|l| matches(l.pattern, *topic))
                            .map(|l| l.name.clone())
                            .collect()
                    };
                    match bus.publish_envelope(env).await {
                        Ok(_) => {}
                        Err(PublishError::Full {
                            subscriptions,
                            delivered,
                        }) if !log => {
                            owed.retain(|n| !subscriptions.contains(n));
                            for n in &subscriptions {
                                *refused.entry(n.clone()).or_default() += 1;
                            }
                            if owed.len() != delivered {
                                problems.push(format!(
                                    "msg {seq}: Full says {delivered} accepted, the model {}",
                                    owed.len()
                                ));
                            }
                        }
                        Err(e) => return Err(format!("publish of msg {seq}: {e:?}")),
                    }
                    msgs.push(Published {
                        seq,
                        id,
                        topic: *topic,
                        payload,
                        owed,
                    });
                    seq += 1;
                }
            }
            Op::Send(b) | Op::Request(b, _) => {
                let n = model::command_n(cmd_seq, *b);
                cmd_seq += 1;
                let deadline = match op {
                    Op::Request(_, d) => Some(*d),
                    _ => None,
                };
                let got = match deadline {
                    Some(d) => {
                        bus.request(crate::Double { n }, Duration::from_millis(d))
                            .await
                    }
                    None => bus.send(crate::Double { n }).await,
                };
                if let Err(e) = model::check_command(&rec, n, *b, deadline, &got) {
                    problems.push(e);
                }
            }
            Op::Settle => {
                tokio::time::timeout(Duration::from_secs(600), bus.run_until_idle())
                    .await
                    .map_err(|_| format!("run_until_idle: still {} pending", bus.pending()))?;
            }
        }
    }
    if log {
        // The log keeps every message: each subscription (or group) alive at the end owes
        // every message of its pattern, also those published before it started.
        for m in &mut msgs {
            for (name, pattern) in &ever {
                if matches(*pattern, m.topic) && live.iter().any(|l| &l.name == name) {
                    m.owed.push(name.clone());
                }
            }
        }
        // Wait for each owed pair to be settled before the shutdown (on a transport only
        // what a publish owes is waited for by it, not a backlog read from the start);
        // with a restart to come, shut down at once instead, mid-flight.
        if restart.is_none() && !settle(&bus, &rec, &msgs, &[]).await {
            problems.push("owed messages not settled within 20 s (see below)".into());
        }
    }
    let report = tokio::time::timeout(
        Duration::from_millis(shutdown_ms) + Duration::from_secs(5),
        bus.shutdown(Duration::from_millis(shutdown_ms)),
    )
    .await
    .map_err(|_| format!("shutdown({shutdown_ms} ms) did not return within its deadline + 5 s"))?
    .map_err(|e| format!("shutdown: {e}"))?;
    let mut letters = model::letters(&bus);
    let mut report = report;
    if let Some(reopen) = restart {
        // Another bus on the same log: the subscriptions (and groups) alive at the end come
        // back under their names; what the first bus did not settle is delivered again, and
        // nothing it settled is handled again.
        drop(bus);
        {
            let mut s = rec.lock().unwrap();
            s.oks_before = std::mem::take(&mut s.oks);
        }
        let bus = reopen();
        let mut again = Vec::new();
        for l in &live {
            again.push(start(&bus, &rec, &l.name, &l.op, log).await?);
        }
        if !settle(&bus, &rec, &msgs, &letters).await {
            problems.push(
                "after the restart, owed messages not settled within 20 s (see below)".into(),
            );
        }
        let second = bus
            .shutdown(Duration::from_secs(2))
            .await
            .map_err(|e| format!("second shutdown: {e}"))?;
        let first_letters = letters.len();
        letters.extend(model::letters(&bus));
        let seqs = |ids: &[switchyard::MessageId]| -> Vec<u64> {
            msgs.iter()
                .filter(|m| ids.contains(&m.id))
                .map(|m| m.seq)
                .collect()
        };
        let first_nacked = seqs(&report.nacked);
        let first_left = seqs(&report.left);
        report.left.extend(second.left);
        report.nacked = second.nacked;
        drop(again);
        if let Err(e) = model::check_accounting(&rec, &msgs, &subs, &letters, &report, true) {
            problems.push(e);
            problems.push(format!(
                "(first shutdown({shutdown_ms} ms): drained {}, nacked msgs {first_nacked:?}, left {first_left:?}, {first_letters} letters)",
                report.drained
            ));
        }
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        };
    }
    if !log && bus.pending() != 0 {
        problems.push(format!("pending {} after shutdown", bus.pending()));
    }
    if !log && !report.nacked.is_empty() {
        problems.push(format!("report.nacked in memory: {:?}", report.nacked));
    }
    if let Err(e) = model::check_accounting(&rec, &msgs, &subs, &letters, &report, false) {
        problems.push(e);
    }
    for l in live.iter().filter(|l| !l.group) {
        let st = l.handle.stats();
        let r = refused.get(&l.name).copied().unwrap_or(0);
        if let Err(e) = model::check_stats(
            &rec,
            &l.name,
            &st,
            &letters,
            r,
            report.left.is_empty() && !log,
        ) {
            problems.push(e);
        }
    }
    if std::env::var_os("REV28_VERBOSE").is_some() {
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for l in &letters {
            *reasons.entry(format!("{:?}", l.reason)).or_default() += 1;
        }
        let s = rec.lock().unwrap();
        eprintln!(
            "rev28 {backend:?}: {} ops, {} msgs, {} owed pairs, {} ok, letters {reasons:?}, refused {}, left {}, nacked {}, cmds {cmd_seq}",
            ops.len(),
            msgs.len(),
            msgs.iter().map(|m| m.owed.len()).sum::<usize>(),
            s.oks.len(),
            refused.values().sum::<u64>(),
            report.left.len(),
            report.nacked.len()
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n(shutdown {shutdown_ms} ms: drained {}, left {}, nacked {})",
            problems.join("\n"),
            report.drained,
            report.left.len(),
            report.nacked.len()
        ))
    }
}
