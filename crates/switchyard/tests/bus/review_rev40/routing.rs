//! Shortcut 4: the thread's routing cache. ARCHITECTURE.md, "The flow of one message", step
//! 2: "The router returns the matching subscriptions: from the thread's last lookup when it
//! was the same topic of the same bus with no subscription change since (a few comparisons
//! and a reference count; held weakly, so it keeps no subscription alive)". Every message
//! must reach exactly the subscriptions that exist when it is published.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use switchyard::{Bus, Envelope, Subscription};

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Subscribe on bus `0`/`1` with pattern number `p` (exact, `*`, `>` forms), from this
    /// thread or (`other`) from another OS thread.
    Sub { bus: usize, p: usize, other: bool },
    /// Drop the `i`-th live subscription (modulo), here or on another thread.
    Drop { i: usize, other: bool },
    /// Publish on bus `0`/`1` to topic `t`, `times` times in a row.
    Publish { bus: usize, t: usize, times: usize },
}

const PATTERNS: [&str; 5] = [
    "rev40.route.a",
    "rev40.route.*",
    "rev40.#",
    "rev40.route.b",
    "#",
];
const TOPICS: [&str; 3] = ["rev40.route.a", "rev40.route.b", "rev40.other"];

fn matches(p: &str, t: &str) -> bool {
    match p {
        "#" => true,
        "rev40.#" => t.starts_with("rev40."),
        "rev40.route.*" => t.starts_with("rev40.route."),
        exact => exact == t,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..PATTERNS.len(), any::<bool>()).prop_map(|(bus, p, other)| Op::Sub {
            bus,
            p,
            other
        }),
        (0..8usize, any::<bool>()).prop_map(|(i, other)| Op::Drop { i, other }),
        (0..2usize, 0..TOPICS.len(), 1..4usize).prop_map(|(bus, t, times)| Op::Publish {
            bus,
            t,
            times
        }),
        (0..2usize, 0..TOPICS.len(), 1..4usize).prop_map(|(bus, t, times)| Op::Publish {
            bus,
            t,
            times
        }),
    ]
}

/// Received (subscription number, message number).
type Got = Arc<Mutex<Vec<(usize, u64)>>>;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    // A multi-thread runtime whose workers run the handlers; the publishes all happen on
    // this test's thread (`block_on`), so its thread-local routing cache is used throughout.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    rt.block_on(async {
        // The second bus with a one-entry shared cache, so its entries are evicted all the time.
        let buses = [
            Bus::new(),
            Bus::builder().match_cache_capacity(1).build().unwrap(),
        ];
        let got: Got = Arc::default();
        let mut live: Vec<(usize, usize, usize, Subscription)> = Vec::new(); // (number, bus, pattern, sub)
        let mut expected: BTreeMap<(usize, u64), usize> = BTreeMap::new();
        let mut next_sub = 0usize;
        let mut next_msg = 0u64;
        for op in ops {
            match *op {
                Op::Sub { bus, p, other } => {
                    let number = next_sub;
                    next_sub += 1;
                    let got = Arc::clone(&got);
                    let builder = buses[bus].subscribe(
                        &format!("rev40-route-{number}"),
                        PATTERNS[p],
                        switchyard::handler_fn(move |env: Envelope| {
                            let got = Arc::clone(&got);
                            async move {
                                let n: u64 =
                                    std::str::from_utf8(&env.payload).unwrap().parse().unwrap();
                                got.lock().unwrap().push((number, n));
                                Ok::<_, std::io::Error>(())
                            }
                        }),
                    );
                    let sub = if other {
                        let handle = handle.clone();
                        std::thread::spawn(move || handle.block_on(builder.start()))
                            .join()
                            .unwrap()
                            .unwrap()
                    } else {
                        builder.start().await.unwrap()
                    };
                    live.push((number, bus, p, sub));
                }
                Op::Drop { i, other } => {
                    if !live.is_empty() {
                        let (_, _, _, sub) = live.remove(i % live.len());
                        if other {
                            std::thread::spawn(move || drop(sub)).join().unwrap();
                        } else {
                            drop(sub);
                        }
                    }
                }
                Op::Publish { bus, t, times } => {
                    for _ in 0..times {
                        let n = next_msg;
                        next_msg += 1;
                        for (number, b, p, _) in &live {
                            if *b == bus && matches(PATTERNS[*p], TOPICS[t]) {
                                *expected.entry((*number, n)).or_default() += 1;
                            }
                        }
                        let env = Envelope::new(
                            switchyard::Topic::new(TOPICS[t]).unwrap(),
                            n.to_string().into_bytes(),
                        );
                        buses[bus].publish_envelope(env).await.unwrap();
                    }
                }
            }
            // Settle before the next change: a dropped subscription may give up what it
            // has queued, which is not what this test is about.
            for bus in &buses {
                bus.run_until_idle().await;
            }
        }
        let mut received: BTreeMap<(usize, u64), usize> = BTreeMap::new();
        for key in got.lock().unwrap().iter() {
            *received.entry(*key).or_default() += 1;
        }
        prop_assert_eq!(received, expected);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Two buses used from one thread, subscriptions made and dropped (here and on other
    /// threads), exact and wildcard patterns added after a topic's lookup was cached: each
    /// message reaches exactly the matching subscriptions of its bus that exist when it is
    /// published, once each.
    #[test]
    fn each_message_reaches_exactly_the_subscriptions_that_exist_at_publish_time(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(&ops)?;
    }
}
