//! Review rev10 through the bus and with foreign clients: shutdown with messages in flight,
//! per-key order, dead letters, headers with nats-py.

use super::*;

/// Through the bus: a handler still running at its bus's shutdown deadline. The message is
/// not lost and not held for the ack wait (30 s): a second bus in the same group gets it, as
/// a redelivery (attempt ≥ 2). On nats-server before 2.10.14 the redelivery may come as
/// attempt 1 (a server defect, see `least_redelivery_attempt`): there only the hand-over is
/// claimed.
#[tokio::test]
async fn a_bus_shut_down_mid_handler_lets_the_other_bus_take_the_message() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let na = connect(SHARED_URL, &setup).await;
    let nb = connect(SHARED_URL, &setup).await;
    let bus_a = Bus::builder().transport(na.clone()).build().unwrap();
    let bus_b = Bus::builder().transport(nb.clone()).build().unwrap();
    let all = setup.all().unwrap().to_string();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let _sa = bus_a
        .subscribe(
            "workers",
            &all,
            handler_fn(move |e: Envelope| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(e.id.to_string());
                    // Never finishes on its own: still running at the shutdown deadline.
                    futures::future::pending::<()>().await;
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let m = env(&setup, "job", "job");
    bus_a.publish_envelope(m.clone()).await.unwrap();
    let id = tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .expect("bus a never started the handler")
        .unwrap();
    assert_eq!(id, m.id.to_string());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sb = bus_b
        .subscribe(
            "workers",
            &all,
            handler_fn(move |e: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((e.id.to_string(), e.delivery.attempt));
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let _ = bus_a.shutdown(Duration::from_millis(500)).await;
    let (got, attempt) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the message in flight at shutdown did not reach the other bus within 5 s")
        .unwrap();
    assert_eq!(got, m.id.to_string());
    let least = least_redelivery_attempt(&nb);
    assert!(
        attempt >= least,
        "attempt {attempt}, at least {least} expected"
    );
    bus_b.shutdown(WAIT).await.unwrap();
}

/// A message nacked `max_deliver` times goes to the transport's dead-letter sink with its
/// raw bytes (not UTF-8) and its user headers untouched.
#[tokio::test]
async fn max_deliveries_dead_letter_keeps_raw_bytes_and_headers() {
    if shared_unavailable().is_some() {
        return;
    }
    let mut setup = Setup::new();
    setup.max_deliver = 2;
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let raw: Vec<u8> = vec![0xff, 0x00, 0xfe, b'{', 0x80];
    let m = Envelope::new(setup.topic("poison").unwrap(), raw.clone())
        .with_header("X-Tenant", "acme")
        .with_header("odd name", "va:lue é");
    t.publish(vec![m.clone()]).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    for attempt in 1..=2 {
        let d = next(&mut sub).await;
        assert_eq!(d.envelope.delivery.attempt, attempt);
        d.nack(None).await.unwrap();
    }
    assert!(setup.dead_letters.wait_for(1, WAIT).await, "no dead letter");
    let dl = setup.dead_letters.list();
    assert_eq!(dl[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(dl[0].envelope.id, m.id);
    assert_eq!(&dl[0].envelope.payload[..], &raw[..]);
    assert_eq!(dl[0].envelope.header("X-Tenant"), Some("acme"));
    assert_eq!(dl[0].envelope.header("odd name"), Some("va:lue é"));
    drop(sub);
    close(&t).await;
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Order {
    id: u32,
}

impl switchyard::Message for Order {
    const TOPIC: &'static str = "rev10.order";
}

/// A foreign message a typed handler cannot decode is dead-lettered by the bus with its
/// raw bytes (reason `DecodeFailed`), and the next good message still gets through.
#[tokio::test]
async fn an_undecodable_foreign_message_is_dead_lettered_with_its_raw_bytes() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let nats = connect(SHARED_URL, &setup).await;
    let letters = Arc::new(RecordingDeadLetters::default());
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .max_attempts(1)
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("orders", move |o: Order, _ctx| {
            let tx = tx.clone();
            async move { tx.send(o.id).map_err(|e| e.to_string()) }
        })
        .pattern(setup.all().unwrap().as_str())
        .start()
        .await
        .unwrap();
    let topic = setup.topic("o").unwrap().to_string();
    crate::interop::foreign_publish(topic.clone(), &[("X-From", "py")], "not json {").await;
    crate::interop::foreign_publish(topic, &[], "{\"id\":7}").await;
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 7);
    assert!(letters.wait_for(1, WAIT).await, "no dead letter");
    let dl = letters.list();
    assert_eq!(dl[0].reason, DeadLetterReason::DecodeFailed, "{:?}", dl[0]);
    assert_eq!(&dl[0].envelope.payload[..], b"not json {");
    assert_eq!(dl[0].envelope.header("X-From"), Some("py"));
    bus.shutdown(WAIT).await.unwrap();
}

fn nats_py_available() -> bool {
    let ok = Process::new("python3")
        .args(["-c", "import nats"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "nats-py is not installed under CI");
        eprintln!("\n!!!!!!!! SKIPPING: nats-py not installed !!!!!!!!\n");
    }
    ok
}

/// nats-py publishes through JetStream with its own headers (no `Nats-Msg-Id`) and then
/// reads, with a JetStream pull consumer of its own, what switchyard published: switchyard
/// keeps every foreign header, and writes its user headers under their own names (or
/// `H-` percent-encoded), `Nats-Msg-Id` = the id, the body untouched.
const PY_PEER: &str = r#"
import asyncio, json, sys
import nats

async def main():
    subject, stream, out_subject = sys.argv[1], sys.argv[2], sys.argv[3]
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.publish(subject, b'{"n":1}', headers={"X-Correlation-Id": "abc-123",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    sub = await js.pull_subscribe(out_subject, durable="py", stream=stream)
    msgs = await sub.fetch(1, timeout=10)
    m = msgs[0]
    await m.ack()
    print(json.dumps({"headers": dict(m.headers or {}), "body": m.data.decode("latin-1")}), flush=True)
    await nc.close()

asyncio.run(main())
"#;

#[tokio::test]
async fn headers_travel_both_ways_with_a_nats_py_peer() {
    if shared_unavailable().is_some() || !nats_py_available() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let in_topic = setup.topic("from.py").unwrap();
    let out = Envelope::new(setup.topic("to.py").unwrap(), "{\"ok\":true}")
        .with_header("X-Tenant", "acme")
        .with_header("odd name", "50% off");
    t.publish(vec![out.clone()]).await.unwrap();
    let mut sub = t
        .subscribe(&Pattern::new(in_topic.as_str()).unwrap(), Some("g"))
        .await
        .unwrap();
    let child = Process::new("python3")
        .args([
            "-c",
            PY_PEER,
            in_topic.as_str(),
            &setup.namespace,
            out.topic.as_str(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = next_acked(&mut sub).await;
    assert_eq!(&got.payload[..], b"{\"n\":1}");
    assert_eq!(got.header("X-Correlation-Id"), Some("abc-123"));
    assert!(got.header("traceparent").is_some());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    let h = &line["headers"];
    assert_eq!(line["body"], "{\"ok\":true}");
    assert_eq!(h["Nats-Msg-Id"], out.id.to_string());
    assert_eq!(h["X-Tenant"], "acme");
    let odd = h
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("H-"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()));
    let (name, value) = odd.expect("the odd header is missing");
    assert_eq!(name, "H-odd%20name");
    assert_eq!(value, "50%25%20off");
    drop(sub);
    close(&t).await;
}

/// A delivery that is never settled (ack wait expiry, not a nack) counts as a failed
/// delivery: with `max_deliver = 1` the next arrival goes to the dead-letter sink.
#[tokio::test]
async fn an_ack_wait_expiry_counts_toward_max_deliver_and_dead_letters() {
    if shared_unavailable().is_some() {
        return;
    }
    let mut setup = Setup::new().with_ack_wait(Duration::from_secs(1));
    setup.max_deliver = 1;
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let m = env(&setup, "slow", "slow");
    t.publish(vec![m.clone()]).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let held = next(&mut sub).await;
    assert_eq!(held.envelope.id, m.id);
    assert!(setup.dead_letters.wait_for(1, WAIT).await, "no dead letter");
    let dl = setup.dead_letters.list();
    assert_eq!(dl[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(dl[0].envelope.id, m.id);
    assert_eq!(&dl[0].envelope.payload[..], b"slow");
    drop(held);
    drop(sub);
    close(&t).await;
}

/// User headers whose names look like reserved ones in another case (`sy-kind`,
/// `nats-msg-id`, `h-x`, `SY-PRIORITY`) are user headers: they come back exactly as they
/// were sent and change nothing about the message (an event stays an event, the id stays).
#[tokio::test]
async fn user_headers_that_look_reserved_in_another_case_round_trip_untouched() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let a = connect(SHARED_URL, &setup).await;
    let b = connect(SHARED_URL, &setup).await;
    let headers = [
        ("sy-kind", "command"),
        ("nats-msg-id", "not-the-id"),
        ("h-x", "1"),
        ("SY-PRIORITY", "7"),
        ("Sy-Custom", "mine"),
        ("nats-expected-stream", "nope"),
    ];
    let mut m = env(&setup, "case", "case");
    for (k, v) in headers {
        m = m.with_header(k, v);
    }
    let mut sub = b.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let published = a.publish(vec![m.clone()]).await;
    assert!(published.is_ok(), "{published:?}");
    let got = next_acked(&mut sub).await;
    assert_eq!(got.id, m.id);
    assert_eq!(got.kind, m.kind, "a user header changed the kind");
    assert_eq!(
        got.priority, m.priority,
        "a user header changed the priority"
    );
    for (k, v) in headers {
        assert_eq!(got.header(k), Some(v), "header {k}");
    }
    drop(sub);
    close(&a).await;
    close(&b).await;
}

/// A foreign message with envelope headers switchyard cannot parse (`Sy-Priority: high`,
/// `Sy-Timestamp: yesterday`) is neither lost nor redelivered forever: it is handed out
/// with defaults, or dead-lettered with its raw bytes.
#[tokio::test]
async fn a_foreign_message_with_unparsable_envelope_headers_is_not_lost() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let topic = setup.topic("odd").unwrap().to_string();
    crate::interop::foreign_publish(
        topic,
        &[
            ("Sy-Priority", "high"),
            ("Sy-Timestamp", "yesterday"),
            ("Sy-Kind", "gossip"),
        ],
        "raw-odd",
    )
    .await;
    let letters = setup.dead_letters.clone();
    tokio::select! {
        d = tokio::time::timeout(WAIT, sub.next()) => {
            let d = d.expect("neither delivered nor dead-lettered").unwrap();
            assert_eq!(&d.envelope.payload[..], b"raw-odd");
            d.ack().await.unwrap();
        }
        true = letters.wait_for(1, WAIT) => {
            let dl = letters.list();
            assert_eq!(&dl[0].envelope.payload[..], b"raw-odd");
        }
    }
    drop(sub);
    close(&t).await;
}

/// Through the bus: a backlog prefetched by a bus whose handler is stuck when it shuts
/// down is handed back, so the other bus of the group gets every message at once (not
/// after the 30 s ack wait), each exactly once or more.
#[tokio::test]
async fn a_bus_shut_down_with_a_prefetched_backlog_hands_all_of_it_back() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let na = connect(SHARED_URL, &setup).await;
    let nb = connect(SHARED_URL, &setup).await;
    let bus_a = Bus::builder().transport(na.clone()).build().unwrap();
    let bus_b = Bus::builder().transport(nb.clone()).build().unwrap();
    let all = setup.all().unwrap().to_string();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let _sa = bus_a
        .subscribe(
            "backlog",
            &all,
            handler_fn(move |_e: Envelope| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(());
                    futures::future::pending::<()>().await;
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..20)
        .map(|i| env(&setup, "job", &i.to_string()))
        .collect();
    let want: BTreeSet<String> = batch.iter().map(|e| e.id.to_string()).collect();
    na.publish(batch).await.unwrap();
    tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .expect("bus a never started")
        .unwrap();
    let _ = bus_a.shutdown(Duration::from_millis(500)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sb = bus_b
        .subscribe(
            "backlog",
            &all,
            handler_fn(move |e: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e.id.to_string());
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen != want {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(id)) => {
                seen.insert(id);
            }
            _ => panic!("bus b got {} of 20 within 5 s of a's shutdown", seen.len()),
        }
    }
    bus_b.shutdown(WAIT).await.unwrap();
}

/// Through the bus on NATS: 4 workers, ordering by the `ordering-key` header. Each key's
/// messages are handled in publish order, also when a key's first message fails once and
/// is retried (the key waits for it), while other keys go on.
#[tokio::test]
async fn a_bus_on_nats_keeps_per_key_order_with_workers_and_a_retry() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let nats = connect(SHARED_URL, &setup).await;
    let bus = Bus::builder().transport(nats.clone()).build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _sub = bus
        .subscribe(
            "ordered",
            setup.all().unwrap().as_str(),
            handler_fn(move |e: Envelope| {
                let tx = tx.clone();
                let failed_once = failed_once.clone();
                async move {
                    let key = e.header("ordering-key").unwrap_or("-").to_owned();
                    let n: u32 = String::from_utf8_lossy(&e.payload).parse().unwrap();
                    // Uneven work, so keys overtake each other.
                    for _ in 0..(n % 5) {
                        tokio::task::yield_now().await;
                    }
                    if n == 0 && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        return Ok::<_, switchyard::BoxError>(switchyard::Outcome::retry());
                    }
                    let _ = tx.send((key, n));
                    Ok(switchyard::Outcome::Ack)
                }
            }),
        )
        .workers(4)
        .retry_delay(Duration::from_millis(20))
        .ordering_header("ordering-key")
        .start()
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..45u32)
        .map(|n| {
            env(&setup, "o", &n.to_string()).with_header("ordering-key", format!("k{}", n % 3))
        })
        .collect();
    nats.publish(batch).await.unwrap();
    let mut per_key: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for _ in 0..45 {
        let (k, n) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("not all 45 handled")
            .unwrap();
        per_key.entry(k).or_default().push(n);
    }
    for (k, got) in &per_key {
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, &sorted, "key {k} out of order");
        assert_eq!(got.len(), 15, "key {k}");
    }
    bus.shutdown(WAIT).await.unwrap();
}

/// The same as `a_bus_shut_down_mid_handler_lets_the_other_bus_take_the_message`, with a
/// message `warm` acked by bus a before: the other bus must get only the stuck message,
/// as a redelivery (attempt ≥ 2; ≥ 1 on nats-server before 2.10.14, see
/// `least_redelivery_attempt`), and never `warm` again.
#[tokio::test]
async fn a_bus_shut_down_mid_handler_hands_back_only_the_stuck_message() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let na = connect(SHARED_URL, &setup).await;
    let nb = connect(SHARED_URL, &setup).await;
    let bus_a = Bus::builder().transport(na.clone()).build().unwrap();
    let bus_b = Bus::builder().transport(nb.clone()).build().unwrap();
    let all = setup.all().unwrap().to_string();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let _sa = bus_a
        .subscribe(
            "workers",
            &all,
            handler_fn(move |e: Envelope| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send((body(&e), e.delivery.attempt));
                    if &e.payload[..] != b"warm" {
                        futures::future::pending::<()>().await;
                    }
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    na.publish(vec![env(&setup, "w", "warm")]).await.unwrap();
    let first = tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ("warm".to_owned(), 1));
    na.publish(vec![env(&setup, "j", "job")]).await.unwrap();
    let second = tokio::time::timeout(WAIT, started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, ("job".to_owned(), 1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sb = bus_b
        .subscribe(
            "workers",
            &all,
            handler_fn(move |e: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((body(&e), e.delivery.attempt));
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let report = bus_a.shutdown(Duration::from_millis(500)).await;
    let mut seen = Vec::new();
    loop {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("job not handed over; b saw {seen:?}; a's shutdown {report:?}")
            })
            .unwrap();
        seen.push(got.clone());
        if got.0 == "job" {
            break;
        }
    }
    let least = least_redelivery_attempt(&nb);
    assert!(
        matches!(seen.as_slice(), [(job, attempt)] if job == "job" && (least..=2).contains(attempt)),
        "b saw {seen:?} (attempt {least}..=2 expected); a's shutdown {report:?}"
    );
    bus_b.shutdown(WAIT).await.unwrap();
}

/// An event published through a bus on NATS reaches that bus's own group subscription
/// once: through the stream, not also in process.
#[tokio::test]
async fn an_event_published_by_a_bus_reaches_its_own_group_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let nats = connect(SHARED_URL, &setup).await;
    let bus = Bus::builder().transport(nats.clone()).build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _s = bus
        .subscribe(
            "own",
            setup.all().unwrap().as_str(),
            handler_fn(move |e: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((body(&e), e.delivery.attempt));
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(env(&setup, "e", "once"))
        .await
        .unwrap();
    nats.publish(vec![env(&setup, "e", "sentinel")])
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let (b, a) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push((b.clone(), a));
        if b == "sentinel" {
            break;
        }
    }
    assert_eq!(
        seen,
        [("once".to_owned(), 1), ("sentinel".to_owned(), 1)],
        "handled twice?"
    );
    bus.shutdown(WAIT).await.unwrap();
}
