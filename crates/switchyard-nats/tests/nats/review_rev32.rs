//! Review rev32 on NATS (the shared server, a stream and a command prefix of its own per test,
//! the stream deleted at the end): one flow followed across two buses, against docs/nats.md
//! "Envelope fields as headers" and docs/bus.md "Correlation and causation".

use std::time::Duration;

use switchyard::{Bus, Envelope, MessageId, Outcome, Pattern, Topic, handler_fn};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::mpsc;

use crate::harness::{SHARED_URL, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A stream `REV32_<tag>` taking `rev32<tag>.#` and a command prefix of the test's own.
struct Place {
    stream: String,
    prefix: String,
    commands: String,
}

impl Place {
    fn new() -> Self {
        let tag = MessageId::new().to_string();
        Self {
            stream: format!("REV32_{tag}"),
            prefix: format!("rev32{tag}"),
            commands: format!("_sy.rev32.{tag}"),
        }
    }

    fn topic(&self, leaf: &str) -> Topic {
        Topic::new(&format!("{}.{leaf}", self.prefix)).unwrap()
    }

    async fn bus(&self) -> (Bus, NatsTransport) {
        let mut config = NatsConfig::new(SHARED_URL).with_stream(
            &self.stream,
            [Pattern::new(&format!("{}.#", self.prefix)).unwrap()],
        );
        config.command_prefix = self.commands.clone();
        let nats = NatsTransport::connect(config).await.unwrap();
        let bus = Bus::builder().transport(nats.clone()).build().unwrap();
        (bus, nats)
    }

    async fn end(&self, buses: &[&Bus], nats: &NatsTransport) {
        for b in buses {
            let _ = b.shutdown(WAIT).await;
        }
        nats.delete_stream(&self.stream).await.unwrap();
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
}

/// Promise (nats.md "Envelope fields as headers": `Sy-Correlation-Id`, `Sy-Causation-Id`, user
/// headers such as `traceparent` carried as they are; bus.md "Correlation and causation"): a
/// command sent from bus A to its handler on bus B keeps its id, correlation (a foreign
/// `corr-42`-like id), causation and `traceparent`; the reply back on A is correlated and
/// caused by the command; the event B's handler publishes (through the stream) reaches A's
/// subscriber with the flow's correlation, caused by the command.
#[tokio::test]
async fn a_command_across_two_buses_keeps_its_flow_both_ways() {
    if shared_unavailable().is_some() {
        return;
    }
    let place = Place::new();
    let (a, nats_a) = place.bus().await;
    let (b, _nats_b) = place.bus().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let b2 = b.clone();
    let charged = place.topic("charged");
    let _handler = b
        .handle_envelope(
            "rev32-charge",
            place.topic("charge").as_str(),
            handler_fn(move |env: Envelope| {
                let (b2, tx, charged) = (b2.clone(), seen_tx.clone(), charged.clone());
                async move {
                    tx.send(env.clone()).unwrap();
                    b2.publish_envelope(Envelope::new(charged, "{}")).await?;
                    Ok::<_, BoxErr>(Outcome::reply(env.reply("{\"ok\":true}")))
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let _events = a
        .subscribe(
            "rev32-events",
            place.topic("charged").as_str(),
            handler_fn(move |env: Envelope| {
                let tx = ev_tx.clone();
                async move {
                    tx.send(env).unwrap();
                    Ok::<_, BoxErr>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();

    let root = Envelope::new(place.topic("root"), "{}")
        .with_correlation_id("corr-nats-1".parse().unwrap());
    let cmd = Envelope::new(place.topic("charge"), "{}")
        .caused_by(&root)
        .with_header("traceparent", TRACEPARENT)
        .with_header("X-Correlation-Id", "shop-77");
    let mut cmd = cmd;
    cmd.kind = switchyard::Kind::Command;
    let cmd_id = cmd.id.clone();
    let result = a.request_envelope(cmd, WAIT).await.unwrap();

    let at_b = recv(&mut seen, "the command at B").await;
    assert_eq!(at_b.id, cmd_id);
    assert_eq!(at_b.correlation_id.to_string(), "corr-nats-1");
    assert_eq!(at_b.causation_id(), Some(&root.id));
    assert_eq!(at_b.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(at_b.header("X-Correlation-Id"), Some("shop-77"));

    let reply = result.reply.expect("a reply");
    assert_eq!(reply.correlation_id.to_string(), "corr-nats-1", "{reply:?}");
    assert_eq!(reply.causation_id(), Some(&cmd_id), "{reply:?}");

    let ev = recv(&mut events, "B's event at A").await;
    assert_eq!(ev.correlation_id.to_string(), "corr-nats-1", "{ev:?}");
    assert_eq!(ev.causation_id(), Some(&cmd_id), "{ev:?}");
    place.end(&[&a, &b], &nats_a).await;
}

/// Promise (nats.md: a foreign `Nats-Msg-Id`, `Sy-Correlation-Id`, `Sy-Causation-Id` "is kept
/// byte for byte"; every other header kept as it came; "a message from a non-switchyard
/// publisher gets defaults for the rest"): a raw NATS client publishes with switchyard's id
/// headers and with `traceparent` / `X-Correlation-Id`; the bus's handler sees the ids as
/// given and the headers intact, and what it publishes is in that flow. A raw publish with
/// only `X-Correlation-Id` starts a flow of its own (correlation = its id): that header is
/// the user's, not the bus's correlation.
#[tokio::test]
async fn a_raw_nats_publish_with_id_and_trace_headers_is_seen_as_given() {
    if shared_unavailable().is_some() {
        return;
    }
    let place = Place::new();
    let (bus, nats) = place.bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b2 = bus.clone();
    let out = place.topic("out");
    let _relay = bus
        .subscribe(
            "rev32-raw",
            place.topic("in").as_str(),
            handler_fn(move |env: Envelope| {
                let (b2, tx, out) = (b2.clone(), tx.clone(), out.clone());
                async move {
                    tx.send(env).unwrap();
                    b2.publish_envelope(Envelope::new(out, "{}")).await?;
                    Ok::<_, BoxErr>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let (out_tx, mut outs) = mpsc::unbounded_channel();
    let _outs = bus
        .subscribe(
            "rev32-out",
            place.topic("out").as_str(),
            handler_fn(move |env: Envelope| {
                let tx = out_tx.clone();
                async move {
                    tx.send(env).unwrap();
                    Ok::<_, BoxErr>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();

    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "raw-msg-1");
    h.insert("Sy-Correlation-Id", "corr-raw-1");
    h.insert("Sy-Causation-Id", "upstream-9");
    h.insert("traceparent", TRACEPARENT);
    h.insert("X-Correlation-Id", "shop-88");
    js.publish_with_headers(place.topic("in").to_string(), h, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = recv(&mut rx, "the raw message").await;
    assert_eq!(got.id.to_string(), "raw-msg-1");
    assert_eq!(got.correlation_id.to_string(), "corr-raw-1");
    assert_eq!(
        got.causation_id().map(|c| c.to_string()).as_deref(),
        Some("upstream-9")
    );
    assert_eq!(got.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(got.header("X-Correlation-Id"), Some("shop-88"));
    let follow = recv(&mut outs, "the relay's follow-up").await;
    assert_eq!(
        follow.correlation_id.to_string(),
        "corr-raw-1",
        "{follow:?}"
    );
    assert_eq!(follow.causation_id(), Some(&got.id), "{follow:?}");

    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Correlation-Id", "shop-99");
    h.insert("traceparent", TRACEPARENT);
    js.publish_with_headers(place.topic("in").to_string(), h, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = recv(&mut rx, "the second raw message").await;
    assert_eq!(got.correlation_id, got.id, "a flow of its own: {got:?}");
    assert_eq!(got.causation_id(), None);
    assert_eq!(got.header("X-Correlation-Id"), Some("shop-99"));
    let follow = recv(&mut outs, "the second follow-up").await;
    assert_eq!(follow.correlation_id, got.id, "{follow:?}");
    place.end(&[&bus], &nats).await;
}

/// Promise (nats.md header table: a replayed dead letter travels as `Nats-Msg-Id:
/// <id>.replay-<n>` with `Sy-Id: <id>`; gateway.md/bus.md: a replay keeps the message's id
/// and headers): an event dead-lettered on NATS and published again as a replay arrives with
/// its own id, its flow's correlation id and its cause, and the replay headers.
#[tokio::test]
async fn a_dead_letter_replayed_on_nats_keeps_its_id_correlation_and_cause() {
    if shared_unavailable().is_some() {
        return;
    }
    let place = Place::new();
    let letters = std::sync::Arc::new(switchyard::InMemoryDeadLetters::new(100));
    let mut config = NatsConfig::new(SHARED_URL).with_stream(
        &place.stream,
        [Pattern::new(&format!("{}.#", place.prefix)).unwrap()],
    );
    config.command_prefix = place.commands.clone();
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "rev32-fails-once",
            place.topic("ev").as_str(),
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let replay = env.header(switchyard::dead_letter::REPLAY_COUNT).is_some();
                    tx.send(env).unwrap();
                    if replay {
                        return Ok::<_, BoxErr>(Outcome::Ack);
                    }
                    Err(Box::new(switchyard::Permanent::new("not yet")) as BoxErr)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let root = Envelope::new(place.topic("root"), "{}")
        .with_correlation_id("corr-nats-dlq".parse().unwrap());
    let ev = Envelope::new(place.topic("ev"), "{}").caused_by(&root);
    bus.publish_envelope(ev.clone()).await.unwrap();
    let first = recv(&mut rx, "the first delivery").await;
    assert_eq!(first.id, ev.id);
    let letter = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(l) = letters.list().into_iter().next() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("dead-lettered");
    assert_eq!(letter.envelope.correlation_id.to_string(), "corr-nats-dlq");
    assert_eq!(letter.envelope.causation_id(), Some(&root.id));
    let mut again = letter.envelope.clone();
    again.delivery = Default::default();
    again
        .headers_mut()
        .insert(switchyard::dead_letter::REPLAYED_FROM, "rev32-fails-once");
    again
        .headers_mut()
        .insert(switchyard::dead_letter::REPLAY_COUNT, "1");
    bus.publish_envelope(again).await.unwrap();
    let replayed = recv(&mut rx, "the replay").await;
    assert_eq!(replayed.id, ev.id, "{replayed:?}");
    assert_eq!(
        replayed.correlation_id.to_string(),
        "corr-nats-dlq",
        "{replayed:?}"
    );
    assert_eq!(replayed.causation_id(), Some(&root.id), "{replayed:?}");
    assert_eq!(replayed.header("replay-count"), Some("1"));
    place.end(&[&bus], &nats).await;
}
