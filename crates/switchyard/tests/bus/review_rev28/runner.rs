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
}

/// Runs `ops` on `bus`, then shuts it down with `shutdown_ms`, and checks everything.
pub async fn run(
    bus: Bus,
    backend: Backend,
    ops: &[Op],
    shutdown_ms: u64,
    slow: u64,
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
                keyed,
                workers,
                queue,
            } => {
                let name = format!("s{next_sub}");
                next_sub += 1;
                let h = model::event_handler(
                    rec.clone(),
                    name.clone(),
                    *behaviour,
                    *keyed,
                    Some(*workers),
                );
                let mut b = bus
                    .subscribe(&name, PATTERNS[*pattern], h)
                    .workers(*workers)
                    .max_attempts(model::MAX_ATTEMPTS)
                    .retry_delay(Duration::from_millis(if log { 2 } else { 100 }));
                if let Some((cap, o)) = model::overflow(*queue) {
                    b = b.queue_capacity(cap).overflow(o);
                }
                if *keyed {
                    b = b.ordering_header("key");
                }
                let handle = b
                    .start()
                    .await
                    .map_err(|e| format!("subscribe {name}: {e}"))?;
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
                });
            }
            Op::Join(group) => {
                let name = format!("g{group}");
                let (behaviour, keyed) = if *group == 0 {
                    (Behaviour::Ok, false)
                } else {
                    (Behaviour::Mixed, true)
                };
                let h = model::event_handler(rec.clone(), name.clone(), behaviour, keyed, None);
                let mut b = bus
                    .subscribe(&name, "rev28.#", h)
                    .max_attempts(model::MAX_ATTEMPTS)
                    .retry_delay(Duration::from_millis(2));
                if keyed {
                    b = b.ordering_header("key");
                }
                let handle = b.start().await.map_err(|e| format!("join {name}: {e}"))?;
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
                        env = env.with_header("key", format!("k{k}"));
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
        // what a publish owes is waited for by it, not a backlog read from the start).
        let settled = || {
            let letters = model::letters(&bus);
            let s = rec.lock().unwrap();
            msgs.iter().all(|m| {
                m.owed.iter().all(|n| {
                    s.oks.contains_key(&(n.clone(), m.seq))
                        || letters
                            .iter()
                            .any(|l| l.envelope.id == m.id && l.handler.as_deref() == Some(n))
                })
            })
        };
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while !settled() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if waited.is_err() {
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
    let letters = model::letters(&bus);
    if !log && bus.pending() != 0 {
        problems.push(format!("pending {} after shutdown", bus.pending()));
    }
    if !log && !report.nacked.is_empty() {
        problems.push(format!("report.nacked in memory: {:?}", report.nacked));
    }
    if let Err(e) = model::check_accounting(&rec, &msgs, &subs, &letters, &report) {
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
