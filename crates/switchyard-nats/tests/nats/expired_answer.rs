//! What a plain NATS client hears for a command whose deadline (`Sy-Deadline-Ms`) passed
//! while it waited in the handler's queue (docs/nats.md, "Deadlines"; docs/bus.md, "Expired
//! messages"): `timeout`, as for one that arrived already expired
//! (review_rev6 `a_zero_deadline_header_is_answered_timeout_at_once`), never
//! `not-processed` (h-fixexpire).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::Notify;

use crate::harness::{SHARED_URL, shared_unavailable};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Double {
    n: u64,
}

impl Message for Double {
    const TOPIC: &'static str = "calc.double";
    const KIND: Kind = Kind::Command;
}

impl Command for Double {
    type Output = u64;
}

/// Waits (polling, bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw request with `Sy-Deadline-Ms` queued behind a busy handler (one worker, a queue of
/// one) until its deadline passed: the worker that reaches it does not run it, and the
/// client is answered `Sy-Status: timeout`.
#[tokio::test(flavor = "current_thread")]
async fn a_command_expired_in_the_queue_is_answered_timeout_to_a_raw_client() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = format!("_sy.fixexpire.{}", switchyard::MessageId::new());
    let mut config = NatsConfig::new(SHARED_URL);
    config.command_prefix = p.clone();
    config.request_prefix = format!("{p}.req");
    let nats = NatsTransport::connect(config).await.unwrap();
    let handler_bus = Bus::builder().transport(nats.clone()).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (c, r) = (calls.clone(), release.clone());
    let _sub = handler_bus
        .handle(move |d: Double, _ctx| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if d.n == 1 {
                    r.notified().await;
                    // Holds the runtime past the queued command's deadline: the worker
                    // reaches it before the serving side's own timer is looked at.
                    std::thread::sleep(Duration::from_millis(500));
                }
                Ok::<u64, String>(d.n * 2)
            }
        })
        .workers(1)
        .queue_capacity(1)
        .start()
        .await
        .unwrap();

    let raw = async_nats::connect(SHARED_URL).await.unwrap();
    let request = |n: u64, deadline: Option<&str>| {
        let raw = raw.clone();
        let subject = format!("{p}.calc.double");
        let mut headers = async_nats::HeaderMap::new();
        if let Some(d) = deadline {
            headers.insert("Sy-Deadline-Ms", d);
        }
        tokio::spawn(async move {
            raw.send_request(
                subject,
                async_nats::Request::new()
                    .headers(headers)
                    .payload(format!("{{\"n\":{n}}}").into())
                    .timeout(Some(Duration::from_secs(20))),
            )
            .await
            .unwrap()
        })
    };
    let first = request(1, None);
    until("the handler holds the first command", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = request(2, Some("200"));
    until("the second command waits in the queue", || {
        handler_bus
            .registry()
            .iter()
            .any(|i| i.pattern == "calc.double" && i.depth == 1)
    })
    .await;
    release.notify_one();
    let status = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("Sy-Status"))
            .map(|v| v.as_str().to_owned())
    };
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("no answer to the expired command")
        .unwrap();
    assert_eq!(
        status(&second).as_deref(),
        Some("timeout"),
        "{:?}",
        second.headers
    );
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload.as_ref(), b"2");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the expired command ran");
}
