use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use switchyard::{Bus, Envelope, Outcome, Priority, Topic, handler_fn};
use tokio::sync::Semaphore;

#[derive(Default)]
struct Seen {
    in_flight: HashSet<String>,
    concurrent: usize,
    max_concurrent: usize,
    order: HashMap<String, Vec<u64>>,
    overlap: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_with_four_workers() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let _sub = bus
        .subscribe(
            "ordered",
            "orders.#",
            handler_fn(move |env: Envelope| {
                let s = s.clone();
                async move {
                    let key = env.header("key").unwrap_or_default().to_owned();
                    let seq: u64 = std::str::from_utf8(&env.payload)?.parse()?;
                    {
                        let mut s = s.lock().unwrap();
                        if !s.in_flight.insert(key.clone()) {
                            s.overlap = true;
                        }
                        s.concurrent += 1;
                        s.max_concurrent = s.max_concurrent.max(s.concurrent);
                    }
                    for _ in 0..(seq % 3) {
                        tokio::task::yield_now().await;
                    }
                    let mut s = s.lock().unwrap();
                    s.in_flight.remove(&key);
                    s.concurrent -= 1;
                    s.order.entry(key).or_default().push(seq);
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::Ack)
                }
            }),
        )
        .workers(4)
        .queue_capacity(2000)
        .ordering_header("key")
        .start()
        .await
        .unwrap();
    let topic = Topic::new("orders.placed").unwrap();
    for i in 0..1000u64 {
        let env =
            Envelope::new(topic.clone(), i.to_string()).with_header("key", format!("k{}", i % 10));
        bus.publish_envelope(env).await.unwrap();
    }
    bus.run_until_idle().await;
    let s = seen.lock().unwrap();
    assert!(!s.overlap, "two messages of one key were in flight at once");
    assert_eq!(s.order.len(), 10);
    for (key, seqs) in &s.order {
        assert_eq!(seqs.len(), 100, "{key}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {seqs:?}"
        );
    }
    assert!(
        s.max_concurrent > 1,
        "different keys should run in parallel"
    );
}

#[tokio::test]
async fn priority_orders_waiting_messages() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let (g, o) = (gate.clone(), order.clone());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "prio",
            "jobs.#",
            handler_fn(move |env: Envelope| {
                let (g, o, tx) = (g.clone(), o.clone(), started_tx.clone());
                async move {
                    let _ = tx.send(());
                    g.acquire().await?.forget();
                    o.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&env.payload).into_owned());
                    Ok::<_, tokio::sync::AcquireError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = Topic::new("jobs.run").unwrap();
    bus.publish_envelope(Envelope::new(topic.clone(), "first"))
        .await
        .unwrap();
    started.recv().await.unwrap();
    for (p, name) in [
        (Priority::LOW, "low"),
        (Priority::NORMAL, "normal"),
        (Priority::HIGH, "high"),
        (Priority::NORMAL, "normal2"),
    ] {
        bus.publish_envelope(Envelope::new(topic.clone(), name).with_priority(p))
            .await
            .unwrap();
    }
    gate.add_permits(10);
    bus.run_until_idle().await;
    assert_eq!(
        *order.lock().unwrap(),
        ["first", "high", "normal", "normal2", "low"]
    );
}
