//! Issue 19, item 3: messages from NATS clients that are not switchyard are validated against
//! the registered JSON Schema of their topic before a handler sees them (the contracts
//! `Validator` as the bus's intake check): an invalid one is dead-lettered with the path and
//! reason of each issue, a valid one delivered, and a command served to another process is
//! answered with the rejection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, BusBuilder, Command, DeadLetterReason, Envelope, Kind, Message, SendError, handler_fn,
};
use switchyard_conformance::Setup;
use switchyard_contracts::{Enforcement, MessageType, Registry, Validator};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};
use crate::interop::foreign_publish;

const WAIT: Duration = Duration::from_secs(10);

/// A type only other languages publish, registered by hand: `{sensor: string, celsius: number}`.
fn reading(topic: &str, name: &str) -> MessageType {
    MessageType {
        name: name.to_owned(),
        topic: topic.to_owned(),
        kind: "event".to_owned(),
        version: 1,
        content_type: "application/json".to_owned(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "sensor": { "type": "string" },
                "celsius": { "type": "number" }
            },
            "required": ["sensor", "celsius"]
        }),
        producers: BTreeSet::new(),
        consumers: BTreeSet::new(),
    }
}

#[tokio::test]
async fn a_foreign_message_that_violates_its_schema_is_dead_lettered_with_the_path() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let enforced = setup.topic("readings").unwrap().to_string();
    let warned = setup.topic("audit.readings").unwrap().to_string();
    let mut registry = Registry::new();
    registry.insert(reading(&enforced, "Reading")).unwrap();
    registry.insert(reading(&warned, "AuditReading")).unwrap();
    let validator = Validator::new(&registry)
        .unwrap()
        .mode(&format!("{}.audit.#", setup.namespace), Enforcement::Warn)
        .unwrap();

    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let letters = Arc::new(switchyard::InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .intake_check(validator.intake_check())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "readers",
            setup.all().unwrap().as_str(),
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    tx.send(env.payload.clone()).unwrap();
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let invalid = r#"{"sensor": "s1", "celsius": "hot"}"#;
    let valid = r#"{"sensor": "s2", "celsius": 21.5}"#;
    let warned_invalid = r#"{"sensor": 3, "celsius": 1}"#;
    foreign_publish(enforced.clone(), &[], invalid).await;
    foreign_publish(enforced, &[], valid).await;
    foreign_publish(warned, &[], warned_invalid).await;

    let mut got = BTreeSet::new();
    while got.len() < 2 {
        let payload = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        got.insert(String::from_utf8(payload.to_vec()).unwrap());
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(
        got,
        BTreeSet::from([valid.to_owned(), warned_invalid.to_owned()]),
        "the valid one and the one on a warn topic are delivered"
    );
    assert!(rx.try_recv().is_err(), "the invalid one is never delivered");
    let dl = letters.list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(&dl[0].envelope.payload[..], invalid.as_bytes());
    assert_eq!(dl[0].reason, DeadLetterReason::Rejected);
    assert!(
        dl[0].error.contains("Reading") && dl[0].error.contains("/celsius"),
        "the error names the type and the path: {}",
        dl[0].error
    );
    assert_eq!(dl[0].handler.as_deref(), Some("readers"));
    let stats = sub.stats();
    assert_eq!((stats.intake_rejected, stats.intake_warned), (1, 1));
    bus.shutdown(WAIT).await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Calibrate {
    sensor: String,
    offset: f64,
}

impl Message for Calibrate {
    const TOPIC: &'static str = "sensors.calibrate";
    const KIND: Kind = Kind::Command;
}

impl Command for Calibrate {
    type Output = f64;
}

fn command_config(prefix: &str) -> NatsConfig {
    let mut c = NatsConfig::new(SHARED_URL);
    c.command_prefix = prefix.to_owned();
    c
}

async fn bus_on(config: NatsConfig, builder: BusBuilder) -> Bus {
    let nats = NatsTransport::connect(config).await.unwrap();
    builder.transport(nats).build().unwrap()
}

/// A command sent from another process that violates the schema is answered with the
/// rejection (and dead-lettered where it was refused); a valid one is handled.
#[tokio::test]
async fn a_remote_command_that_violates_its_schema_is_answered_with_the_rejection() {
    if shared_unavailable().is_some() {
        return;
    }
    let prefix = format!("_sy.cmdtest.{}", switchyard::MessageId::new());
    let mut registry = Registry::new();
    let mut ty = reading(Calibrate::TOPIC, "Calibrate");
    ty.kind = "command".to_owned();
    ty.schema = serde_json::json!({
        "type": "object",
        "properties": { "sensor": { "type": "string" }, "offset": { "type": "number", "maximum": 5 } },
        "required": ["sensor", "offset"]
    });
    registry.insert(ty).unwrap();
    let handler_bus = bus_on(
        command_config(&prefix),
        Bus::builder().intake_check(Validator::new(&registry).unwrap().intake_check()),
    )
    .await;
    let (tx, mut handled) = mpsc::unbounded_channel();
    let handler = handler_bus
        .handle(move |c: Calibrate, _| {
            let tx = tx.clone();
            async move {
                tx.send(c.offset).map_err(|e| e.to_string())?;
                Ok::<_, String>(c.offset)
            }
        })
        .start()
        .await
        .unwrap();
    let sender = bus_on(command_config(&prefix), Bus::builder()).await;

    let refused = sender
        .send(Calibrate {
            sensor: "s1".into(),
            offset: 9.0,
        })
        .await;
    let Err(SendError::Rejected { reason }) = refused else {
        panic!("expected a rejection, got {refused:?}");
    };
    assert!(reason.contains("/offset"), "{reason}");
    let ok = sender
        .send(Calibrate {
            sensor: "s1".into(),
            offset: 1.5,
        })
        .await
        .unwrap();
    assert_eq!(ok, 1.5);
    assert_eq!(handled.recv().await, Some(1.5));
    assert!(handled.try_recv().is_err(), "the invalid command never ran");
    let dl = handler_bus.dead_letters().unwrap().list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::Rejected);
    assert_eq!(handler.stats().intake_rejected, 1);
    sender.shutdown(WAIT).await.unwrap();
    handler_bus.shutdown(WAIT).await.unwrap();
}

/// The handler process's intake check panics for one command served to another process
/// (`intake::run_check` catches it): the command is not run, it is dead-lettered `Panicked`
/// with the panic's message where it was refused, the sender gets `SendError::Failed` with
/// that message and 0 attempts (docs/bus.md), and the next commands are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_command_whose_intake_check_panics_is_dead_lettered_and_the_next_is_served() {
    if shared_unavailable().is_some() {
        return;
    }
    let prefix = format!("_sy.cmdtest.{}", switchyard::MessageId::new());
    let handler_bus = bus_on(
        command_config(&prefix),
        Bus::builder().intake_check(|env: &Envelope| {
            let c: Calibrate = serde_json::from_slice(&env.payload).unwrap();
            assert!(c.offset < 5.0, "check: offset {} out of range", c.offset);
            switchyard::IntakeVerdict::Accept
        }),
    )
    .await;
    let (tx, mut handled) = mpsc::unbounded_channel();
    let handler = handler_bus
        .handle(move |c: Calibrate, _| {
            let tx = tx.clone();
            async move {
                tx.send(c.offset).map_err(|e| e.to_string())?;
                Ok::<_, String>(c.offset)
            }
        })
        .start()
        .await
        .unwrap();
    let sender = bus_on(command_config(&prefix), Bus::builder()).await;
    let calibrate = |offset: f64| Calibrate {
        sensor: "s1".into(),
        offset,
    };

    let sent = sender.send(calibrate(9.0)).await;
    let requested = sender.request(calibrate(7.0), WAIT).await;
    let served = sender.send(calibrate(1.5)).await;
    let requested_ok = sender.request(calibrate(2.5), WAIT).await;

    for (r, offset) in [(&sent, 9), (&requested, 7)] {
        let Err(SendError::Failed { error, attempts }) = r else {
            panic!("offset {offset}: expected Failed from the panicking check, got {r:?}");
        };
        assert_eq!(
            error,
            &format!("intake check panicked: check: offset {offset} out of range")
        );
        assert_eq!(*attempts, 0, "the handler never ran");
    }
    assert_eq!(served.unwrap(), 1.5, "the next command is served");
    assert_eq!(requested_ok.unwrap(), 2.5);
    assert_eq!(handled.recv().await, Some(1.5));
    assert_eq!(handled.recv().await, Some(2.5));
    assert!(handled.try_recv().is_err(), "a refused command ran");

    let mut dl = handler_bus.dead_letters().unwrap().list();
    dl.sort_by_key(|l| l.error.clone());
    assert_eq!(dl.len(), 2, "{dl:?}");
    for (letter, offset) in dl.iter().zip([7, 9]) {
        assert_eq!(letter.reason, DeadLetterReason::Panicked, "{letter:?}");
        assert_eq!(
            letter.error,
            format!("intake check panicked: check: offset {offset} out of range")
        );
        let c: Calibrate = serde_json::from_slice(&letter.envelope.payload).unwrap();
        assert_eq!(c.offset, f64::from(offset), "the command as sent");
        assert_eq!(letter.handler.as_deref(), Some(handler.name()));
    }
    let stats = handler.stats();
    assert_eq!((stats.panicked, stats.dead_lettered), (2, 2));
    sender.shutdown(WAIT).await.unwrap();
    handler_bus.shutdown(WAIT).await.unwrap();
}
