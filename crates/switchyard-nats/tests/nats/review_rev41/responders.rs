//! The other direction: a switchyard command answered by a foreign responder, the queue
//! group a foreign member may join, and durable commands from a foreign client
//! (docs/interop.md "Commands").

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard::{Bus, SendError};
use switchyard_conformance::Setup;
use switchyard_core::Pattern;
use switchyard_nats::NatsTransport;
use tokio::sync::Notify;

use super::commands::{Double, doubler};
use super::{StreamGuard, WAIT, get, headers, raw, round_trip, skip};

/// interop.md: "`Sy-Reply` | `1` when the body is the handler's reply …; a responder of
/// another language may leave it out: with `Sy-Status: ok`, a non-empty body is then the
/// reply", with `Sy-Status` / `Sy-Error` / `Sy-Attempts` saying how it went. A bus sending
/// `Double` is answered by a plain NATS responder in the queue group `switchyard`; the
/// request it reads is the command's JSON with `Sy-Kind` and, for `bus.request`, the
/// deadline headers.
#[tokio::test]
async fn a_switchyard_command_is_answered_by_a_foreign_responder() {
    if skip() {
        return;
    }
    let prefix = format!("_sy.rev41.{}", Setup::new().namespace);
    let mut config = super::default_config();
    config.command_prefix = prefix.clone();
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder().transport(nats).build().unwrap();
    let responder = raw().await;
    let mut sub = responder
        .queue_subscribe(format!("{prefix}.rev41.double"), "switchyard".into())
        .await
        .unwrap();
    round_trip(&responder).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let serving = tokio::spawn(async move {
        let answers: [(&[(&str, &str)], &str); 4] = [
            (&[("Sy-Status", "ok")], "42"),
            (&[], "43"),
            (
                &[
                    ("Sy-Status", "failed"),
                    ("Sy-Error", "boom"),
                    ("Sy-Attempts", "3"),
                ],
                "",
            ),
            (&[("Sy-Status", "ok"), ("Sy-Reply", "1")], "44"),
        ];
        for (h, body) in answers {
            let msg = sub.next().await.unwrap();
            log.lock().unwrap().push((
                String::from_utf8(msg.payload.to_vec()).unwrap(),
                get(&msg, "Sy-Kind"),
                get(&msg, "Sy-Deadline-Ms"),
                get(&msg, "Sy-Deadline-At").is_some(),
            ));
            responder
                .publish_with_headers(msg.reply.unwrap(), headers(h), body.to_owned().into())
                .await
                .unwrap();
        }
        responder.flush().await.unwrap();
    });
    assert_eq!(
        bus.send(Double { n: 21 }).await.unwrap(),
        42,
        "Sy-Status ok, no Sy-Reply"
    );
    assert_eq!(
        bus.send(Double { n: 21 }).await.unwrap(),
        43,
        "no Sy- header at all"
    );
    match bus.send(Double { n: 21 }).await {
        Err(SendError::Failed { error, attempts }) => {
            assert_eq!((error.as_str(), attempts), ("boom", 3));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let out = bus.request(Double { n: 22 }, Duration::from_secs(3)).await;
    assert_eq!(out.unwrap(), 44);
    tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    for (body, kind, _, at) in &seen {
        assert!(body.contains("\"n\":2"), "the command's JSON: {body}");
        assert!(
            matches!(kind.as_deref(), Some("command" | "request")),
            "{kind:?}"
        );
        assert!(at, "Sy-Deadline-At on every command");
    }
    let ms: u64 = seen[3]
        .2
        .as_deref()
        .expect("Sy-Deadline-Ms of a request")
        .parse()
        .unwrap();
    assert!(ms <= 3_000 && ms > 1_000, "{ms}");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "command topic `double` | core request to `_sy.cmd.double`
/// (`NatsConfig::command_prefix`), queue group `switchyard`". A plain client that joins that
/// queue group beside a switchyard handler shares the commands with it: each of 40 requests
/// is answered exactly once, some by each member.
#[tokio::test]
async fn a_foreign_member_of_the_switchyard_queue_group_shares_the_commands() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut handled) = doubler(&ns, Arc::new(Notify::new())).await;
    let subject = format!("_sy.cmd.{ns}.double");
    let member = raw().await;
    let mut sub = member
        .queue_subscribe(subject.clone(), "switchyard".into())
        .await
        .unwrap();
    round_trip(&member).await;
    let foreign = tokio::spawn(async move {
        let mut count = 0;
        while let Some(msg) = sub.next().await {
            let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            let body = (v["n"].as_i64().unwrap() * 2).to_string();
            member
                .publish_with_headers(
                    msg.reply.unwrap(),
                    headers(&[("Sy-Status", "ok")]),
                    body.into(),
                )
                .await
                .unwrap();
            count += 1;
            if count == 1000 {
                break;
            }
        }
        count
    });
    let client = raw().await;
    let mut answers = BTreeSet::new();
    for n in 0..40i64 {
        let reply = super::commands::request(
            &client,
            subject.clone(),
            headers(&[]),
            &format!("{{\"n\":{n}}}"),
        )
        .await
        .unwrap();
        assert_eq!(get(&reply, "Sy-Status").as_deref(), Some("ok"));
        let v: i64 = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v, 2 * n);
        answers.insert(n);
    }
    assert_eq!(answers.len(), 40);
    bus.run_until_idle().await;
    let mut by_switchyard = 0;
    while handled.try_recv().is_ok() {
        by_switchyard += 1;
    }
    foreign.abort();
    assert!(
        by_switchyard > 0 && by_switchyard < 40,
        "switchyard handled {by_switchyard} of 40: the group was not shared"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "any client can publish the command to `_sy.dcmd.<topic>` through JetStream
/// (JSON body, `Nats-Msg-Id` for dedup, optionally `Sy-Deadline-Ms`) with
/// `Sy-Reply-To: <subject>`; the result arrives on that subject with the headers above once a
/// handler has handled it." A resend with the same `Nats-Msg-Id` is a duplicate and is not
/// handled again. (The prefix and stream are configured per test, as `NatsConfig` allows, so
/// the shared server's default `_sy.dcmd` is left alone.)
#[tokio::test]
async fn a_foreign_durable_command_is_answered_on_its_reply_to_and_deduplicated() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let stream = format!("REV41_{}", ns.to_uppercase());
    let _guard = StreamGuard(stream.clone());
    let dprefix = format!("_sy.rev41d.{ns}");
    let mut config = super::default_config()
        .with_durable_commands([Pattern::new(&format!("{ns}.#")).unwrap()])
        .with_durable_command_stream(stream.clone());
    config.command_prefix = format!("_sy.rev41c.{ns}");
    config.durable_command_prefix = dprefix.clone();
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder().transport(nats).build().unwrap();
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .handle(move |c: Double, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(c.n);
                Ok::<_, String>(c.n * 2)
            }
        })
        .pattern(&format!("{ns}.double"))
        .start()
        .await
        .unwrap();
    let client = raw().await;
    let inbox = client.new_inbox();
    let mut results = client.subscribe(inbox.clone()).await.unwrap();
    round_trip(&client).await;
    let h = headers(&[
        ("Nats-Msg-Id", "dcmd-1"),
        ("Sy-Reply-To", inbox.as_str()),
        ("Sy-Deadline-Ms", "5000"),
    ]);
    let subject = format!("{dprefix}.{ns}.double");
    let first = super::js_publish(&client, subject.clone(), Some(h.clone()), br#"{"n":21}"#).await;
    let again = super::js_publish(&client, subject, Some(h), br#"{"n":21}"#).await;
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    let msg = super::raw_next(&mut results).await;
    assert_eq!(
        get(&msg, "Sy-Status").as_deref(),
        Some("ok"),
        "{:?}",
        msg.headers
    );
    assert_eq!(&msg.payload[..], b"42");
    assert_eq!(handled.recv().await, Some(21));
    bus.run_until_idle().await;
    assert!(handled.try_recv().is_err(), "the duplicate was handled");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
