//! Property test: random publish / receive / ack / nack / term / drop / restart sequences
//! against a model of the group's expected behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use switchyard_core::{Delivery, Envelope, MessageId, Pattern, Publisher, Subscriber, Topic};
use switchyard_log::{Durability, LogConfig, LogSubscription, LogTransport};

#[derive(Debug, Clone)]
enum Op {
    Publish { key: Option<u8>, n: u8 },
    Receive,
    Ack(usize),
    Nack(usize),
    Term(usize),
    Drop(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u8..3), 1u8..4).prop_map(|(key, n)| Op::Publish { key, n }),
        5 => Just(Op::Receive),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
        1 => any::<usize>().prop_map(Op::Term),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Restart),
    ]
}

fn config(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
        .with_durability(Durability::Never)
        .with_ack_wait(Duration::from_secs(3600))
        .with_max_deliver(0)
        .with_max_ack_pending(100_000)
}

#[derive(Default)]
struct Model {
    /// (id, key) by offset.
    published: Vec<(MessageId, Option<u8>)>,
    /// Settled as far as the running transport knows.
    settled: BTreeSet<u64>,
    held: Vec<(u64, Delivery)>,
    /// Offsets in the order of their first ack/term.
    first_settles: Vec<u64>,
    ever_settled: HashSet<u64>,
}

impl Model {
    fn expected_next(&self) -> Option<u64> {
        let mut blocked = HashSet::new();
        for (off, (_, key)) in self.published.iter().enumerate() {
            let off = off as u64;
            if self.settled.contains(&off) {
                continue;
            }
            if key.is_some_and(|k| !blocked.insert(k)) {
                continue;
            }
            if !self.held.iter().any(|(o, _)| *o == off) {
                return Some(off);
            }
        }
        None
    }

    fn settle(&mut self, off: u64) {
        self.settled.insert(off);
        if self.ever_settled.insert(off) {
            self.first_settles.push(off);
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    log: Option<LogTransport>,
    sub: Option<LogSubscription>,
    offsets: HashMap<MessageId, u64>,
}

impl Harness {
    async fn start(&mut self) {
        let log = LogTransport::open(config(self.dir.path())).unwrap();
        let sub = log
            .subscribe(&Pattern::new("m.#").unwrap(), Some("g"))
            .await
            .unwrap();
        self.log = Some(log);
        self.sub = Some(sub);
    }

    async fn stop(&mut self) {
        self.sub = None;
        if let Some(log) = self.log.take() {
            log.close(std::time::Instant::now() + Duration::from_secs(10))
                .await
                .unwrap();
        }
    }

    fn try_receive(&mut self) -> Option<Delivery> {
        self.sub.as_mut()?.next().now_or_never().flatten()
    }
}

async fn run(ops: Vec<Op>) {
    let mut h = Harness {
        dir: tempfile::tempdir().unwrap(),
        log: None,
        sub: None,
        offsets: HashMap::new(),
    };
    h.start().await;
    let mut m = Model::default();
    let topic = Topic::new("m.x").unwrap();
    for op in ops {
        match op {
            Op::Publish { key, n } => {
                let batch: Vec<Envelope> = (0..n)
                    .map(|_| {
                        let e = Envelope::new(topic.clone(), "p");
                        match key {
                            Some(k) => e.with_header("ordering-key", format!("k{k}")),
                            None => e,
                        }
                    })
                    .collect();
                for e in &batch {
                    h.offsets.insert(e.id.clone(), m.published.len() as u64);
                    m.published.push((e.id.clone(), key));
                }
                h.log.as_ref().unwrap().publish(batch).await.unwrap();
            }
            Op::Receive => {
                let got = h.try_receive();
                let got_off = got.as_ref().map(|d| h.offsets[&d.envelope.id]);
                assert_eq!(got_off, m.expected_next(), "receive");
                if let (Some(d), Some(off)) = (got, got_off) {
                    m.held.push((off, d));
                }
            }
            Op::Ack(i) | Op::Term(i) if !m.held.is_empty() => {
                let (off, d) = m.held.remove(i % m.held.len());
                if matches!(op, Op::Ack(_)) {
                    d.ack().await.unwrap();
                } else {
                    d.term("model").await.unwrap();
                }
                m.settle(off);
            }
            Op::Nack(i) if !m.held.is_empty() => {
                let (_, d) = m.held.remove(i % m.held.len());
                d.nack(None).await.unwrap();
            }
            Op::Drop(i) if !m.held.is_empty() => {
                let (_, d) = m.held.remove(i % m.held.len());
                drop(d);
            }
            Op::Restart => {
                m.held.clear();
                h.stop().await;
                // A clean restart keeps every settle: the committed offset and the offsets
                // settled above it are written on close, so only what was unsettled comes
                // back (before review "logacks", everything at or above the first unsettled
                // offset did).
                h.start().await;
            }
            _ => {}
        }
    }
    // Drain: settle everything held, then receive and ack until nothing is left.
    for (off, d) in std::mem::take(&mut m.held) {
        d.ack().await.unwrap();
        m.settle(off);
    }
    while let Some(d) = h.try_receive() {
        let off = h.offsets[&d.envelope.id];
        assert_eq!(Some(off), m.expected_next(), "drain");
        d.ack().await.unwrap();
        m.settle(off);
    }
    assert_eq!(m.expected_next(), None);
    assert_eq!(
        m.ever_settled.len(),
        m.published.len(),
        "every message settled"
    );
    // Per key, messages were settled for the first time in publish order.
    for k in 0..3u8 {
        let order: Vec<u64> = m
            .first_settles
            .iter()
            .copied()
            .filter(|&o| m.published[o as usize].1 == Some(k))
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "order of key {k}");
    }
    h.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
