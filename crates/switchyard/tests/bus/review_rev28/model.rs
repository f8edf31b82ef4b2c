//! The operations, their generators, what the handlers record, and the model's checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use switchyard::{
    BoxError, BoxHandler, Bus, DeadLetter, DeadLetterReason, Envelope, MessageId, Outcome,
    Overflow, SendError, ShutdownReport, SubscriptionStats, handler_fn,
};

/// Attempts every subscription and the command handler get (the bus's default, set anyway).
pub const MAX_ATTEMPTS: u32 = 3;

/// Topics a publish goes to.
pub const TOPICS: [&str; 3] = ["rev28.a.x", "rev28.a.y", "rev28.b.x"];
/// Patterns a subscription takes: exact, `*`, trailing `#`, leading `#`.
pub const PATTERNS: [&str; 4] = ["rev28.a.x", "rev28.a.*", "rev28.#", "#.x"];

/// Whether pattern `p` matches topic `t` (the table of the four patterns above).
pub fn matches(p: usize, t: usize) -> bool {
    match p {
        0 => t == 0,
        1 => t == 0 || t == 1,
        2 => true,
        _ => t == 0 || t == 2,
    }
}

/// What a handler does with a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Succeeds.
    Ok,
    /// Fails while `attempt <= n`, then succeeds (n >= MAX_ATTEMPTS: dead-lettered).
    Fail(u32),
    /// Panics on every attempt.
    Panic,
    /// Rejects.
    Reject,
    /// Sleeps this many ms, then succeeds.
    Slow(u64),
    /// One of the above chosen by the message's sequence number.
    Mixed,
}

impl Behaviour {
    /// The behaviour for message `seq`.
    pub fn for_msg(self, seq: u64) -> Behaviour {
        match self {
            Behaviour::Mixed => match seq % 5 {
                0 => Behaviour::Ok,
                1 => Behaviour::Fail(1 + (seq / 5 % 4) as u32),
                2 => Behaviour::Panic,
                3 => Behaviour::Reject,
                _ => Behaviour::Slow(3),
            },
            b => b,
        }
    }

    /// The dead letter's reason and attempts when this behaviour cannot succeed, else None.
    pub fn dead_end(self) -> Option<(DeadLetterReason, u32)> {
        match self {
            Behaviour::Fail(n) if n >= MAX_ATTEMPTS => {
                Some((DeadLetterReason::HandlerFailed, MAX_ATTEMPTS))
            }
            Behaviour::Panic => Some((DeadLetterReason::Panicked, MAX_ATTEMPTS)),
            Behaviour::Reject => Some((DeadLetterReason::Rejected, 1)),
            _ => None,
        }
    }

    fn code(self) -> u64 {
        match self {
            Behaviour::Ok => 0,
            Behaviour::Fail(n) => u64::from(n.min(4)),
            Behaviour::Panic => 5,
            Behaviour::Reject => 6,
            Behaviour::Slow(_) => 7,
            Behaviour::Mixed => 0,
        }
    }

    fn from_code(c: u64, slow: u64) -> Behaviour {
        match c {
            0 => Behaviour::Ok,
            1..=4 => Behaviour::Fail(c as u32),
            5 => Behaviour::Panic,
            6 => Behaviour::Reject,
            _ => Behaviour::Slow(slow),
        }
    }
}

/// A subscription's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueKind {
    /// The defaults (1024, `Block` 1 s).
    Default,
    /// This capacity with `RejectNew`.
    RejectNew(usize),
    /// This capacity with `DropOldest`.
    DropOldest(usize),
    /// This capacity with `Block { 50 ms }`.
    Block(usize),
    /// This capacity with `Adaptive { 1 ms, 50 ms }`.
    Adaptive(usize),
}

/// One step of a sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// A plain subscription (a fresh name) to `PATTERNS[pattern]`.
    Subscribe {
        pattern: usize,
        behaviour: Behaviour,
        keyed: bool,
        workers: usize,
        queue: QueueKind,
    },
    /// A member of consumer group `g{group}` (pattern `rev28.#`; log only): `g0` succeeds,
    /// unkeyed; `g1` is `Mixed` and keyed.
    Join(u8),
    /// Drops the live subscription (or group member) at this index.
    Drop(prop::sample::Index),
    /// `count` messages to `TOPICS[topic]`, with header `key` when given.
    Publish {
        topic: usize,
        key: Option<u8>,
        count: u32,
    },
    /// `send` of a command whose handler behaves so.
    Send(Behaviour),
    /// `request` with this deadline (ms).
    Request(Behaviour, u64),
    /// `run_until_idle` (memory only).
    Settle,
}

fn behaviour(slow_max: u64) -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Ok),
        2 => (1u32..=4).prop_map(Behaviour::Fail),
        1 => Just(Behaviour::Panic),
        1 => Just(Behaviour::Reject),
        1 => (1..=slow_max).prop_map(Behaviour::Slow),
        2 => Just(Behaviour::Mixed),
    ]
}

fn command_behaviour(slow_max: u64) -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        2 => Just(Behaviour::Ok),
        2 => (1u32..=4).prop_map(Behaviour::Fail),
        1 => Just(Behaviour::Panic),
        1 => Just(Behaviour::Reject),
        1 => (1..=slow_max).prop_map(Behaviour::Slow),
    ]
}

fn queue() -> impl Strategy<Value = QueueKind> {
    prop_oneof![
        4 => Just(QueueKind::Default),
        1 => (1usize..=3).prop_map(QueueKind::RejectNew),
        1 => (1usize..=3).prop_map(QueueKind::DropOldest),
        1 => (1usize..=3).prop_map(QueueKind::Block),
        1 => (1usize..=3).prop_map(QueueKind::Adaptive),
    ]
}

/// Sequences of at most `max_ops` operations; `log` adds group members and leaves out
/// `Settle` (approximate on a transport); `slow_max` bounds a slow handler's sleep (ms).
pub fn ops(log: bool, max_ops: usize, max_count: u32, slow_max: u64) -> BoxedStrategy<Vec<Op>> {
    let subscribe = (
        0..PATTERNS.len(),
        behaviour(slow_max),
        any::<bool>(),
        1usize..=3,
        queue(),
    )
        .prop_map(
            |(pattern, behaviour, keyed, workers, queue)| Op::Subscribe {
                pattern,
                behaviour,
                keyed,
                workers,
                queue,
            },
        );
    let publish = (0..TOPICS.len(), prop::option::of(0u8..3), 1..=max_count)
        .prop_map(|(topic, key, count)| Op::Publish { topic, key, count });
    let op = if log {
        prop_oneof![
            3 => subscribe,
            2 => (0u8..2).prop_map(Op::Join),
            2 => any::<prop::sample::Index>().prop_map(Op::Drop),
            5 => publish,
            1 => command_behaviour(slow_max).prop_map(Op::Send),
            1 => (command_behaviour(slow_max), 1u64..=300).prop_map(|(b, d)| Op::Request(b, d)),
        ]
        .boxed()
    } else {
        prop_oneof![
            3 => subscribe,
            1 => any::<prop::sample::Index>().prop_map(Op::Drop),
            5 => publish,
            1 => command_behaviour(slow_max).prop_map(Op::Send),
            1 => (command_behaviour(slow_max), 1u64..=300).prop_map(|(b, d)| Op::Request(b, d)),
            1 => Just(Op::Settle),
        ]
        .boxed()
    };
    prop::collection::vec(op, 1..=max_ops).boxed()
}

/// What the handlers saw, shared by all of them.
#[derive(Default)]
pub struct Seen {
    /// Handler calls per subscription name.
    pub calls: HashMap<String, u64>,
    /// Distinct messages called per subscription name.
    pub called: HashMap<String, std::collections::HashSet<u64>>,
    /// Calls that panicked, per subscription name.
    pub panics: HashMap<String, u64>,
    /// Calls that failed (error or panic), per subscription name.
    pub failures: HashMap<String, u64>,
    /// Successful ends per (subscription name, seq).
    pub oks: HashMap<(String, u64), u32>,
    /// `oks` of the first bus, once a second one runs on the same log.
    pub oks_before: HashMap<(String, u64), u32>,
    in_flight: HashMap<String, usize>,
    in_flight_key: HashMap<(String, String), usize>,
    last_first: HashMap<(String, String), u64>,
    /// Broken invariants noticed while running.
    pub violations: Vec<String>,
}

/// The shared record.
pub type Rec = Arc<Mutex<Seen>>;

/// Leaves the in-flight counts when a call ends (returned, panicked or aborted).
struct Leave {
    rec: Rec,
    name: String,
    key: Option<String>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut s = self.rec.lock().unwrap();
        *s.in_flight.get_mut(&self.name).unwrap() -= 1;
        if let Some(k) = self.key.take() {
            *s.in_flight_key.get_mut(&(self.name.clone(), k)).unwrap() -= 1;
        }
    }
}

fn enter(rec: &Rec, name: &str, seq: u64, key: Option<String>, limit: Option<usize>) -> Leave {
    let mut s = rec.lock().unwrap();
    *s.calls.entry(name.to_owned()).or_default() += 1;
    let first = s.called.entry(name.to_owned()).or_default().insert(seq);
    let n = s.in_flight.entry(name.to_owned()).or_default();
    *n += 1;
    let n = *n;
    if let Some(limit) = limit.filter(|l| n > *l) {
        s.violations
            .push(format!("{name}: {n} calls at once with workers({limit})"));
    }
    if let Some(k) = &key {
        let id = (name.to_owned(), k.clone());
        let n = s.in_flight_key.entry(id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            let n = *n;
            s.violations
                .push(format!("{name}: {n} calls of key {k} at once (msg {seq})"));
        }
        if first {
            if let Some(last) = s.last_first.get(&id).copied().filter(|l| *l > seq) {
                s.violations.push(format!(
                    "{name}: key {k} order broken: msg {seq} first handled after msg {last}"
                ));
            }
            s.last_first.insert(id, seq);
        }
    }
    drop(s);
    Leave {
        rec: rec.clone(),
        name: name.to_owned(),
        key,
    }
}

fn note_ok(rec: &Rec, name: &str, seq: u64) {
    let mut s = rec.lock().unwrap();
    let n = s.oks.entry((name.to_owned(), seq)).or_default();
    *n += 1;
    if *n > 1 {
        let n = *n;
        s.violations
            .push(format!("{name}: msg {seq} handled successfully {n} times"));
    }
}

fn note_failure(rec: &Rec, name: &str, panicked: bool) {
    let mut s = rec.lock().unwrap();
    *s.failures.entry(name.to_owned()).or_default() += 1;
    if panicked {
        *s.panics.entry(name.to_owned()).or_default() += 1;
    }
}

/// The payload of message `seq`.
pub fn payload(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq}}}").into_bytes()
}

fn seq_of(env: &Envelope) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    v["seq"].as_u64().unwrap()
}

/// Runs `b` for one attempt, recording it.
async fn act(
    rec: &Rec,
    name: &str,
    b: Behaviour,
    attempt: u32,
) -> Result<(), Result<Outcome, BoxError>> {
    match b {
        Behaviour::Fail(n) if attempt <= n => {
            note_failure(rec, name, false);
            Err(Err(format!("planned failure {attempt}/{n}").into()))
        }
        Behaviour::Panic => {
            note_failure(rec, name, true);
            std::panic::panic_any(format!("planned panic of {name}"))
        }
        Behaviour::Reject => Err(Ok(Outcome::reject("planned rejection"))),
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An event handler recording into `rec` under `name`.
pub fn event_handler(
    rec: Rec,
    name: String,
    b: Behaviour,
    keyed: bool,
    limit: Option<usize>,
) -> BoxHandler {
    handler_fn(move |env: Envelope| {
        let (rec, name) = (rec.clone(), name.clone());
        async move {
            let seq = seq_of(&env);
            let key = env.header("key").filter(|_| keyed).map(str::to_owned);
            let _leave = enter(&rec, &name, seq, key, limit);
            match act(&rec, &name, b.for_msg(seq), env.delivery.attempt).await {
                Ok(()) => {
                    note_ok(&rec, &name, seq);
                    Ok::<_, BoxError>(Outcome::Ack)
                }
                Err(other) => other,
            }
        }
    })
}

/// The command handler: `n = seq * 8 + behaviour code`, answers `n * 2`.
pub fn command_handler(rec: Rec, slow: u64) -> BoxHandler {
    handler_fn(move |env: Envelope| {
        let rec = rec.clone();
        async move {
            let n: u64 = serde_json::from_slice::<crate::Double>(&env.payload)
                .unwrap()
                .n;
            let _leave = enter(&rec, "cmd", n, None, Some(1));
            let b = Behaviour::from_code(n % 8, slow);
            match act(&rec, "cmd", b, env.delivery.attempt).await {
                Ok(()) => {
                    note_ok(&rec, "cmd", n);
                    let reply = env.reply(serde_json::to_vec(&(n * 2)).unwrap());
                    Ok::<_, BoxError>(Outcome::reply(reply))
                }
                Err(other) => other,
            }
        }
    })
}

/// The command number for `seq` behaving as `b`.
pub fn command_n(seq: u64, b: Behaviour) -> u64 {
    seq * 8 + b.code()
}

/// Checks one command's result against its behaviour.
pub fn check_command(
    rec: &Rec,
    n: u64,
    b: Behaviour,
    deadline: Option<u64>,
    got: &Result<u64, SendError>,
) -> Result<(), String> {
    let oks = rec
        .lock()
        .unwrap()
        .oks
        .get(&("cmd".to_owned(), n))
        .copied()
        .unwrap_or(0);
    let fine = match (got, b.dead_end()) {
        (Ok(v), None) => *v == n * 2 && oks == 1,
        (Err(SendError::Failed { attempts, .. }), Some((r, a))) => {
            oks == 0 && (r != DeadLetterReason::Rejected) && (*attempts == a || deadline.is_some())
        }
        (Err(SendError::Rejected { .. }), Some((DeadLetterReason::Rejected, _))) => oks == 0,
        // a request may run out of time, or see its retry refused past the deadline
        (Err(SendError::Timeout { .. }), _) => deadline.is_some(),
        (Err(SendError::Failed { .. }), None) => deadline.is_some() && oks == 0,
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!(
            "command {n} ({b:?}, deadline {deadline:?} ms): got {got:?}, handler succeeded {oks} time(s)"
        ))
    }
}

/// The overflow policy and capacity of a queue kind.
pub fn overflow(q: QueueKind) -> Option<(usize, Overflow)> {
    let block = Duration::from_millis(50);
    match q {
        QueueKind::Default => None,
        QueueKind::RejectNew(c) => Some((c, Overflow::RejectNew)),
        QueueKind::DropOldest(c) => Some((c, Overflow::DropOldest)),
        QueueKind::Block(c) => Some((c, Overflow::Block { timeout: block })),
        QueueKind::Adaptive(c) => Some((
            c,
            Overflow::Adaptive {
                max_delay: Duration::from_millis(1),
                timeout: block,
            },
        )),
    }
}

/// One published message as the model sees it.
#[derive(Debug)]
pub struct Published {
    /// Its sequence number.
    pub seq: u64,
    /// Its id.
    pub id: MessageId,
    /// Index into `TOPICS`.
    pub topic: usize,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// Subscription names that must account for it.
    pub owed: Vec<String>,
}

/// What one subscription (or group) is, for the checks.
#[derive(Debug, Clone)]
pub struct SubModel {
    /// Its behaviour.
    pub behaviour: Behaviour,
    /// Its queue.
    pub queue: QueueKind,
    /// Whether it was dropped.
    pub dropped: bool,
}

/// Checks every owed (message, subscription) pair: handled successfully once, or
/// dead-lettered once with the right reason and the raw bytes, a `Shutdown` one named in
/// the report; and nothing handled or dead-lettered that was not owed.
///
/// `across_restart`: the pairs span two buses on one log, where a message handled by the
/// first bus whose settle did not reach the log before it closed (an ack refused after
/// `close`, docs/log.md) is delivered again after the restart (at-least-once; since review
/// "logacks" one acked above a still unsettled one no longer is): each pair must then be
/// settled at least once, and at most once per bus (`Seen::oks` checks that as it goes).
pub fn check_accounting(
    rec: &Rec,
    msgs: &[Published],
    subs: &HashMap<String, SubModel>,
    letters: &[DeadLetter],
    report: &ShutdownReport,
    across_restart: bool,
) -> Result<(), String> {
    let s = rec.lock().unwrap();
    let mut problems = s.violations.clone();
    let mut by_pair: HashMap<(MessageId, String), Vec<&DeadLetter>> = HashMap::new();
    for l in letters {
        let h = l.handler.as_deref().unwrap_or("").to_owned();
        by_pair
            .entry((l.envelope.id.clone(), h))
            .or_default()
            .push(l);
    }
    for m in msgs {
        for name in &m.owed {
            let sub = &subs[name];
            let pair = (name.clone(), m.seq);
            let oks = s.oks.get(&pair).copied().unwrap_or(0)
                + s.oks_before.get(&pair).copied().unwrap_or(0);
            let dls = by_pair
                .remove(&(m.id.clone(), name.clone()))
                .unwrap_or_default();
            let settled = oks + dls.len() as u32;
            if (!across_restart && settled != 1) || settled < 1 || dls.len() > 2 {
                problems.push(format!(
                    "msg {} on {} to {name} ({:?}, {:?}{}): handled {oks}, dead-lettered {:?}",
                    m.seq,
                    TOPICS[m.topic],
                    sub.behaviour,
                    sub.queue,
                    if sub.dropped { ", dropped" } else { "" },
                    dls.iter()
                        .map(|l| (l.reason, l.attempts))
                        .collect::<Vec<_>>()
                ));
                continue;
            }
            let b = sub.behaviour.for_msg(m.seq);
            if oks >= 1 && b.dead_end().is_some() {
                problems.push(format!(
                    "msg {} handled by {name} whose {b:?} cannot succeed",
                    m.seq
                ));
            }
            let Some(l) = dls.first() else { continue };
            if l.envelope.payload.as_ref() != m.payload.as_slice() {
                problems.push(format!(
                    "dead letter of msg {} for {name}: bytes {:?}",
                    m.seq, l.envelope.payload
                ));
            }
            let fine = match l.reason {
                DeadLetterReason::Shutdown => report.left.contains(&m.id),
                DeadLetterReason::Dropped => matches!(sub.queue, QueueKind::DropOldest(_)),
                DeadLetterReason::Unroutable => sub.dropped,
                // across a restart the attempt count goes on from the redelivery's number
                r if across_restart => b.dead_end().map(|d| d.0) == Some(r),
                r => b.dead_end() == Some((r, l.attempts)),
            };
            if !fine {
                problems.push(format!(
                    "msg {} for {name} ({b:?}, {:?}): dead letter {:?} after {} attempt(s): {}",
                    m.seq, sub.queue, l.reason, l.attempts, l.error
                ));
            }
        }
    }
    for ((id, name), dls) in by_pair {
        let seq = msgs.iter().find(|m| m.id == id).map(|m| m.seq);
        if subs.get(&name).is_some_and(|s| s.dropped) && seq.is_some() {
            // a dropped subscription may have settled some of its messages: once at most
            if dls.len() > 1 {
                problems.push(format!(
                    "msg {seq:?} dead-lettered {} times for {name}",
                    dls.len()
                ));
            }
        } else if name != "cmd" {
            problems.push(format!(
                "dead letter not owed: msg {seq:?} for {name}: {:?}",
                dls[0].reason
            ));
        }
    }
    for ((name, seq), _) in s.oks.iter().chain(s.oks_before.iter()) {
        if name != "cmd" && !msgs.iter().any(|m| m.seq == *seq && m.owed.contains(name)) {
            let dropped = subs.get(name).is_some_and(|s| s.dropped);
            if !dropped || !msgs.iter().any(|m| m.seq == *seq) {
                problems.push(format!(
                    "msg {seq} handled by {name}, which was not owed it"
                ));
            }
        }
    }
    for id in &report.left {
        if !letters
            .iter()
            .any(|l| &l.envelope.id == id && l.reason == DeadLetterReason::Shutdown)
        {
            problems.push(format!(
                "report.left names {id} but no Shutdown dead letter does"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Checks a live subscription's counters against what the handlers and the store saw.
pub fn check_stats(
    rec: &Rec,
    name: &str,
    st: &SubscriptionStats,
    letters: &[DeadLetter],
    refused: u64,
    exact_retries: bool,
) -> Result<(), String> {
    let s = rec.lock().unwrap();
    let get = |m: &HashMap<String, u64>| m.get(name).copied().unwrap_or(0);
    let calls = get(&s.calls);
    let distinct = s.called.get(name).map_or(0, |c| c.len() as u64);
    let oks = s.oks.iter().filter(|((n, _), _)| n == name).count() as u64;
    let mine: Vec<_> = letters
        .iter()
        .filter(|l| l.handler.as_deref() == Some(name))
        .collect();
    let dropped = mine
        .iter()
        .filter(|l| l.reason == DeadLetterReason::Dropped)
        .count() as u64;
    let mut p = Vec::new();
    let mut eq = |what: &str, stat: u64, model: u64| {
        if stat != model {
            p.push(format!(
                "{name}: stats.{what} = {stat}, the model saw {model}"
            ));
        }
    };
    eq("acked", st.acked, oks);
    eq("delivered", st.delivered, calls);
    eq("dead_lettered", st.dead_lettered, mine.len() as u64);
    eq("dropped", st.dropped, dropped);
    eq("refused_full", st.refused_full, refused);
    eq("panicked", st.panicked, get(&s.panics));
    eq("failed", st.failed, get(&s.failures));
    if exact_retries {
        eq("retried", st.retried, calls - distinct);
    } else if st.retried < calls - distinct {
        p.push(format!(
            "{name}: stats.retried = {} < {} repeated calls",
            st.retried,
            calls - distinct
        ));
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err(p.join("\n"))
    }
}

/// The bus's dead letters (default store).
pub fn letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters()
        .expect("default dead-letter store")
        .list()
}
