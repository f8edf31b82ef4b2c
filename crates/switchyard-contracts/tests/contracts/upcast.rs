//! Messages an older build wrote to the embedded log (version 1 of `OrderPlaced`) reach a
//! handler of version 3 through the chained upcasters.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard::{
    Bus, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Message, Publisher, Topic,
};
use switchyard_contracts::{Contract, JsonSchema, Upcasters};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// Version 3: `amount` (a float in v1) became `amount_cents`, and `currency` (added in v2,
/// "EUR" for everything before) is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct OrderPlaced {
    order: String,
    amount_cents: u64,
    currency: String,
}
impl Message for OrderPlaced {
    const TOPIC: &'static str = "orders.placed";
    const VERSION: u32 = 3;
}
impl Contract for OrderPlaced {}

fn upcasters() -> Upcasters {
    Upcasters::new()
        .step_for::<OrderPlaced, _, _>(1, |mut v| {
            v["currency"] = json!("EUR");
            Ok::<_, String>(v)
        })
        .step_for::<OrderPlaced, _, _>(2, |mut v| {
            let amount = v["amount"].as_f64().ok_or("v2 `amount` is not a number")?;
            v["amount_cents"] = json!((amount * 100.0).round() as u64);
            v.as_object_mut().ok_or("not an object")?.remove("amount");
            Ok::<_, String>(v)
        })
}

/// What the build before `OrderPlaced` v2 wrote: its envelopes, as they are on disk.
fn v1_envelope(order: &str, amount: f64) -> Envelope {
    let mut env = Envelope::new(
        Topic::new("orders.placed").unwrap(),
        serde_json::to_vec(&json!({"order": order, "amount": amount})).unwrap(),
    );
    env.type_name = Some("OrderPlaced".into());
    env.type_version = 1;
    env
}

/// The committed fixture: a log directory written by the "older build" (regenerate with
/// `cargo test -p switchyard-contracts -- --ignored write_fixture`).
fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "regenerates the committed fixture"]
async fn write_fixture() {
    let dir = fixture();
    let _ = std::fs::remove_dir_all(&dir);
    let log = LogTransport::open(LogConfig::new(&dir)).unwrap();
    log.publish(vec![v1_envelope("A-1", 12.5), v1_envelope("A-2", 0.99)])
        .await
        .unwrap();
    log.close(std::time::Instant::now() + WAIT).await.unwrap();
    let _ = std::fs::remove_file(dir.join("LOCK"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

struct Letters(mpsc::UnboundedSender<DeadLetter>);
impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let _ = self.0.send(letter);
    }
}

/// A bus on a copy of the fixture log, its dead letters on a channel.
fn bus_on_fixture(
    dir: &Path,
    ups: Option<Upcasters>,
) -> (Bus, mpsc::UnboundedReceiver<DeadLetter>) {
    copy_dir(&fixture(), dir);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut b = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir)).unwrap())
        .dead_letters(Letters(tx));
    if let Some(u) = ups {
        b = b.upcaster(u);
    }
    (b.build().unwrap(), rx)
}

async fn handled(
    bus: &Bus,
) -> (
    switchyard::Subscription,
    mpsc::UnboundedReceiver<(OrderPlaced, u32)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("billing", move |o: OrderPlaced, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((o, ctx.envelope().type_version))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    (sub, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_messages_from_an_older_builds_log_reach_a_v3_handler_through_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, mut letters) = bus_on_fixture(dir.path(), Some(upcasters()));
    let (_sub, mut rx) = handled(&bus).await;
    // A current message published next to the old ones is decoded as it is.
    bus.publish(OrderPlaced {
        order: "B-1".into(),
        amount_cents: 700,
        currency: "NOK".into(),
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        got,
        [
            (
                OrderPlaced {
                    order: "A-1".into(),
                    amount_cents: 1250,
                    currency: "EUR".into()
                },
                1
            ),
            (
                OrderPlaced {
                    order: "A-2".into(),
                    amount_cents: 99,
                    currency: "EUR".into()
                },
                1
            ),
            (
                OrderPlaced {
                    order: "B-1".into(),
                    amount_cents: 700,
                    currency: "NOK".into()
                },
                3
            ),
        ]
    );
    bus.shutdown(WAIT).await.unwrap();
    assert!(letters.try_recv().is_err(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upcasters_the_old_messages_are_dead_lettered_as_undecodable() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, mut letters) = bus_on_fixture(dir.path(), None);
    let (_sub, mut rx) = handled(&bus).await;
    for _ in 0..2 {
        let l = tokio::time::timeout(WAIT, letters.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(l.envelope.type_version, 1);
    }
    bus.shutdown(WAIT).await.unwrap();
    assert!(rx.try_recv().is_err(), "no old message reached the handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_chain_dead_letters_with_the_missing_step_named() {
    let dir = tempfile::tempdir().unwrap();
    let only_first = Upcasters::new().step("OrderPlaced", 1, Ok::<_, String>);
    let (bus, mut letters) = bus_on_fixture(dir.path(), Some(only_first));
    let (_sub, _rx) = handled(&bus).await;
    let l = tokio::time::timeout(WAIT, letters.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.reason, DeadLetterReason::DecodeFailed);
    assert!(
        l.error
            .contains("no upcaster for `OrderPlaced` from version 2"),
        "{}",
        l.error
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[test]
fn an_upcaster_for_another_type_leaves_the_payload_alone() {
    use switchyard::Upcast;
    let ups = upcasters();
    assert!(ups.upcast("Other", 1, 3, b"{}").unwrap().is_none());
    let out = ups
        .upcast("OrderPlaced", 1, 3, br#"{"order":"x","amount":1}"#)
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"order": "x", "amount_cents": 100, "currency": "EUR"})
    );
}

/// Defect found in review: a raw publish (gateway, `publish_envelope`) has no `type_name` and
/// the default `type_version` 1, so it was upcast from v1 as if an older build wrote it, and
/// a current-shaped payload failed the v2 → v3 step and was dead-lettered.
#[tokio::test]
async fn a_raw_message_without_a_type_name_is_not_upcast() {
    let (tx, _letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .upcaster(upcasters())
        .dead_letters(Letters(tx))
        .build()
        .unwrap();
    let (_sub, mut rx) = handled(&bus).await;
    let raw = Envelope::new(
        Topic::new("orders.placed").unwrap(),
        serde_json::to_vec(&json!({"order": "G-1", "amount_cents": 5, "currency": "SEK"})).unwrap(),
    );
    assert_eq!((raw.type_name.as_deref(), raw.type_version), (None, 1));
    bus.publish_envelope(raw).await.unwrap();
    let (got, version) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.order, "G-1");
    assert_eq!((got.amount_cents, version), (5, 1));
}
