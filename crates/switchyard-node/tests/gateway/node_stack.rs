//! The resilience stack the node puts around every handler, with more than one worker per
//! subscription (`bus.workers` in the node's config): what an idle worker's readiness
//! reserved (a half-open breaker's one trial call) must not keep another worker's call
//! waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard::{Envelope, Outcome, Topic, handler_fn};
use switchyard_node::{Node, NodeConfig};

/// A node on the memory transport with `workers` workers per subscription.
fn config(workers: usize) -> NodeConfig {
    NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "memory"
[bus]
workers = {workers}
shutdown_timeout_ms = 1000
"#
    ))
    .unwrap()
}

/// The node's breaker opens after 5 failures (the default stack: 3 attempts per message, a
/// 30 s cool-down, one trial call). A handler whose first 7 calls fail: the first message
/// fails its 3 attempts; the second fails twice (the breaker opens), and its third attempt,
/// the half-open trial after the cool-down, fails too (the breaker opens again): both are
/// dead-lettered. The third message, published while the breaker is open, wakes both idle
/// workers, which wait on the breaker; after the cool-down one of them takes the trial and
/// calls it (it fails: open again), and its retry is held until the next cool-down, when it
/// must run as the trial, succeed and close the breaker. With one worker and with two alike:
/// the other worker, which waited on the breaker too, must not keep the trial for itself
/// once it finds no message to take.
///
/// Failed before the fix (3 runs of 3, one worker passing): `2 worker(s): the retry held by
/// the open breaker never ran after the 30 s cool-down: Err(Elapsed(())); handler calls 7,
/// SubscriptionStats { delivered: 3, acked: 0, failed: 2, .., retried: 5, .., dead_lettered:
/// 2, .. }`. The node boxed its own stack, and the bus leaves a boxed handler's readiness
/// alone: the idle worker kept the trial it took at the cool-down.
#[tokio::test(start_paused = true)]
// Fixed: the node uses the bus's own stack (`with_resilience_for`), whose readiness an idle
// worker gives back.
async fn a_retry_held_by_the_node_breaker_runs_after_the_cool_down_with_two_workers() {
    for workers in [1, 2] {
        let node = Node::start(config(workers)).await.unwrap();
        let bus = node.bus().clone();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let sub = bus
            .subscribe(
                "flaky",
                "flaky.#",
                handler_fn(move |_env: Envelope| {
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        if n <= 7 {
                            Err(std::io::Error::other(format!("backend down (call {n})")))
                        } else {
                            Ok(Outcome::Ack)
                        }
                    }
                }),
            )
            .start()
            .await
            .unwrap();
        assert_eq!(
            sub.info().workers,
            workers,
            "the node's bus.workers applies"
        );
        let publish = |body: &'static str| {
            bus.publish_envelope(Envelope::new(Topic::new("flaky.job").unwrap(), body))
        };
        for body in ["first", "second"] {
            publish(body).await.unwrap();
            tokio::time::timeout(Duration::from_secs(120), bus.run_until_idle())
                .await
                .unwrap_or_else(|_| panic!("the {body} message settles"));
        }
        publish("third").await.unwrap();
        let settled = tokio::time::timeout(Duration::from_secs(120), bus.run_until_idle()).await;
        assert!(
            settled.is_ok(),
            "{workers} worker(s): the retry held by the open breaker never ran after the 30 s \
             cool-down: {settled:?}; handler calls {}, {:?}",
            calls.load(Ordering::SeqCst),
            sub.stats()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 8, "{workers} worker(s)");
        let stats = sub.stats();
        assert_eq!(stats.acked, 1, "{workers} worker(s): {stats:?}");
        assert_eq!(stats.dead_lettered, 2, "{workers} worker(s): {stats:?}");
        drop(sub);
        node.shutdown().await.unwrap();
    }
}
