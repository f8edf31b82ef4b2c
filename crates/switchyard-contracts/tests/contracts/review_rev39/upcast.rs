//! Upcaster chains on every decode path the docs name (`on`, `on_batch`, `handle`), in
//! version order whatever the order of registration, never on newer messages, from version
//! 0 (which the gateway accepts), and in the validator (a step that panics there).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{Bus, Command, DeadLetterReason, Envelope, Kind, Message, Topic};
use switchyard_contracts::{
    Contract, JsonSchema, Registry, UpcastError, Upcasters, Validator, Verdict,
};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

use super::{Letters, WAIT, next};

/// Version 3. v1 had `title` only; v2 added `trail`; v3 added `stage`. Each step appends to
/// `trail`, so the order they ran in shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Ticket {
    title: String,
    trail: String,
    stage: u32,
}
impl Message for Ticket {
    const TOPIC: &'static str = "rev39.upcast.ticket";
    const VERSION: u32 = 3;
}
impl Contract for Ticket {}

/// The steps registered newest first (`2 → 3` before `1 → 2`), counting their calls.
fn ticket_steps(calls: Arc<AtomicUsize>) -> Upcasters {
    let c2 = calls.clone();
    Upcasters::new()
        .step_for::<Ticket, _, _>(2, move |mut v| {
            c2.fetch_add(1, Ordering::SeqCst);
            let trail = v["trail"]
                .as_str()
                .ok_or("2 -> 3: no `trail` (did 1 -> 2 run?)")?;
            v["trail"] = json!(format!("{trail}>v3"));
            v["stage"] = json!(3);
            Ok::<_, String>(v)
        })
        .step_for::<Ticket, _, _>(1, move |mut v| {
            calls.fetch_add(1, Ordering::SeqCst);
            if v.get("trail").is_some() {
                return Err("1 -> 2 on a value that already has `trail`".to_owned());
            }
            v["trail"] = json!("v1>v2");
            Ok(v)
        })
}

fn ticket(version: u32, payload: Value) -> Envelope {
    let mut env = super::envelope(Ticket::TOPIC, &payload, Some("Ticket"));
    env.type_version = version;
    env
}

#[test]
fn steps_registered_newest_first_run_oldest_first() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ups = ticket_steps(calls.clone());
    let v = ups
        .upcast_value("Ticket", 1, 3, json!({"title": "t"}))
        .unwrap();
    assert_eq!(v, json!({"title": "t", "trail": "v1>v2>v3", "stage": 3}));
    let v = ups
        .upcast_value("Ticket", 2, 3, json!({"title": "t", "trail": "x"}))
        .unwrap();
    assert_eq!(v["trail"], "x>v3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Version 0 (the gateway accepts `x-type-version: 0`): the chain starts at a step from 0.
    let err = ups
        .upcast_value("Ticket", 0, 3, json!({"title": "t"}))
        .unwrap_err();
    assert!(
        matches!(err, UpcastError::Missing { from: 0, to: 3, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "no upcaster for `Ticket` from version 0 (needed to reach version 3)"
    );
}

/// `on`, `on_batch` and the validator see the same thing: v1 and v2 messages upcast through
/// the right steps, a v3 one and a v7 one (newer: decoded as it is, serde ignoring what it
/// does not know) never touched.
#[tokio::test]
async fn on_and_on_batch_upcast_old_versions_and_leave_current_and_newer_alone() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .upcaster(ticket_steps(calls.clone()))
        .dead_letters(Letters(ltx))
        .build()
        .unwrap();
    let (tx, mut single) = mpsc::unbounded_channel();
    let _one = bus
        .on("single", move |t: Ticket, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((t, ctx.envelope().type_version))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    let (btx, mut batched) = mpsc::unbounded_channel();
    let _batch = bus
        .on_batch("batched", move |ts: Vec<Ticket>, _ctx| {
            let btx = btx.clone();
            async move {
                for t in ts {
                    btx.send(t).map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    let cases = [
        (1, json!({"title": "a"}), "v1>v2>v3", 3),
        (2, json!({"title": "b", "trail": "w"}), "w>v3", 3),
        (
            3,
            json!({"title": "c", "trail": "cur", "stage": 9}),
            "cur",
            9,
        ),
        (
            7,
            json!({"title": "d", "trail": "new", "stage": 7, "extra": true}),
            "new",
            7,
        ),
    ];
    for (version, payload, _, _) in &cases {
        let report = bus
            .publish_envelope_and_wait(ticket(*version, payload.clone()))
            .await
            .unwrap();
        assert_eq!(
            (report.handled, report.failures.len()),
            (2, 0),
            "version {version}: {report:?}"
        );
    }
    for (version, payload, trail, stage) in &cases {
        let (t, seen) = next(&mut single, "the `on` handler").await;
        assert_eq!(
            (t.title.as_str(), t.trail.as_str(), t.stage, seen),
            (payload["title"].as_str().unwrap(), *trail, *stage, *version),
            "on, version {version}"
        );
        let t = next(&mut batched, "the `on_batch` handler").await;
        assert_eq!(
            (t.trail.as_str(), t.stage),
            (*trail, *stage),
            "on_batch, version {version}"
        );
    }
    // Two subscriptions, each upcasting its own copy: v1 takes 2 steps, v2 one.
    assert_eq!(calls.load(Ordering::SeqCst), 2 * (2 + 1));
    assert!(letters.try_recv().is_err(), "nothing dead-lettered");
    bus.shutdown(WAIT).await.unwrap();
}

/// Version 0 of a type whose chain starts at 1 is dead-lettered `decode_failed`, naming the
/// missing step, on `on` as the docs say for a gap.
#[tokio::test]
async fn a_version_0_message_is_dead_lettered_naming_the_missing_step() {
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .upcaster(ticket_steps(Arc::default()))
        .dead_letters(Letters(ltx))
        .build()
        .unwrap();
    let _sub = bus
        .on("single", |_: Ticket, _| async { Ok::<_, String>(()) })
        .start()
        .await
        .unwrap();
    let report = bus
        .publish_envelope_and_wait(ticket(0, json!({"title": "z"})))
        .await
        .unwrap();
    assert_eq!(
        (report.handled, report.failures.len()),
        (0, 1),
        "{report:?}"
    );
    let letter = next(&mut letters, "the dead letter").await;
    assert_eq!(letter.reason, DeadLetterReason::DecodeFailed, "{letter:?}");
    assert!(letter.error.contains("from version 0"), "{}", letter.error);
    assert_eq!(
        letter.envelope.type_version, 0,
        "the envelope as it was written"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// v2 of a command: `qty` became `quantity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Book {
    room: String,
    quantity: u32,
}
impl Message for Book {
    const TOPIC: &'static str = "rev39.upcast.book";
    const KIND: Kind = Kind::Command;
    const VERSION: u32 = 2;
}
impl Command for Book {
    type Output = u32;
}
impl Contract for Book {}

/// A v1 command (from a dead letter being replayed, another process's older build) reaches
/// a v2 `handle` handler upcast, and the reply says so.
#[tokio::test]
async fn a_command_of_an_older_version_reaches_its_handler_upcast() {
    let ups = Upcasters::new().step_for::<Book, _, _>(1, |mut v| {
        let qty = v["qty"].take();
        v["quantity"] = qty;
        Ok::<_, String>(v)
    });
    let bus = Bus::builder().upcaster(ups).build().unwrap();
    let _h = bus
        .handle(|b: Book, _| async move { Ok::<_, String>(b.quantity * 10) })
        .start()
        .await
        .unwrap();
    let mut env = Envelope::new(
        Topic::new(Book::TOPIC).unwrap(),
        serde_json::to_vec(&json!({"room": "r1", "qty": 4})).unwrap(),
    );
    env.kind = Kind::Command;
    env.type_name = Some("Book".into());
    env.type_version = 1;
    let result = tokio::time::timeout(WAIT, bus.send_envelope(env))
        .await
        .expect("send_envelope timed out")
        .unwrap();
    let reply = result.reply.expect("a reply");
    assert_eq!(
        serde_json::from_slice::<u32>(&reply.payload).unwrap(),
        40,
        "{:?}",
        String::from_utf8_lossy(&reply.payload)
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A validator of `Ticket` whose `1 → 2` step panics (`panics`) or returns an error.
fn validator_with_step(panics: bool) -> Validator {
    let mut registry = Registry::new();
    registry.register::<Ticket>().unwrap();
    let ups = Upcasters::new()
        .step_for::<Ticket, _, _>(1, move |_v: Value| -> Result<Value, String> {
            if panics {
                panic!("rev39: an upcaster step that panics")
            }
            Err("rev39: an upcaster step that fails".into())
        })
        .step_for::<Ticket, _, _>(2, Ok::<_, String>);
    Validator::new(&registry).unwrap().upcasters(ups)
}

fn panicking_validator() -> Validator {
    validator_with_step(true)
}

/// docs/contracts.md: with upcasters, "a gap in the chain or a failing step makes it invalid
/// (`not upcast: ...`)", and the bus turns a panicking step into a dead letter (review rev6).
/// The validator, which the node's gateway and the bus's intake call, gives a verdict too.
#[test]
fn a_panicking_step_in_the_validator_is_an_invalid_verdict_not_a_panic() {
    let validator = panicking_validator();
    let env = ticket(1, json!({"title": "a"}));
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| validator.check(&env)));
    let verdict = verdict.unwrap_or_else(|p| {
        let text = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        panic!("Validator::check panicked ({text}) instead of giving an Invalid verdict `not upcast: ...`")
    });
    assert!(
        matches!(&verdict, Verdict::Invalid { issues, .. } if issues[0].reason.starts_with("not upcast")),
        "{verdict:?}"
    );
}

/// A bus on the embedded log with `validator` as its intake check: a v1 `Ticket` published,
/// then a current one. What the handler got within `WAIT`, and the first dead letter.
async fn intake_run(validator: Validator) -> (Option<Ticket>, Option<switchyard::DeadLetter>) {
    let dir = tempfile::tempdir().unwrap();
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir.path())).unwrap())
        .dead_letters(Letters(ltx))
        .intake_check(validator.intake_check())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("tickets", move |t: Ticket, _| {
            let tx = tx.clone();
            async move { tx.send(t).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ticket(1, json!({"title": "old"})))
        .await
        .unwrap();
    bus.publish(Ticket {
        title: "new".into(),
        trail: "t".into(),
        stage: 3,
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten();
    let letter = if got.is_some() {
        Some(next(&mut letters, "the dead letter of the v1 message").await)
    } else {
        letters.try_recv().ok()
    };
    drop(sub);
    let _ = tokio::time::timeout(WAIT, bus.shutdown(WAIT)).await;
    (got, letter)
}

/// The control: a step that returns an error makes the v1 message invalid (`not upcast`),
/// dead-lettered `rejected` with its bytes, and the next message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_in_the_intake_check_dead_letters_and_the_next_is_delivered() {
    let (got, letter) = intake_run(validator_with_step(false)).await;
    assert_eq!(got.map(|t| t.title), Some("new".to_owned()));
    let letter = letter.unwrap();
    assert_eq!(letter.reason, DeadLetterReason::Rejected, "{letter:?}");
    assert!(
        letter.error.contains("not upcast") && letter.error.contains("fails"),
        "{}",
        letter.error
    );
    assert_eq!(&letter.envelope.payload[..], br#"{"title":"old"}"#);
}

/// The same validator as a bus's intake check on the embedded log, its step panicking: the
/// v1 message should be dead-lettered (as a panicking filter's message is) and the
/// subscription go on to deliver the next message. The pump called the intake check without
/// catching a panic (`crates/switchyard/src/pump.rs`, `check(arrived)`), and the
/// subscription stopped; it is caught now (`intake::run_check`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_in_the_intake_check_does_not_stop_the_subscription() {
    let (got, letter) = intake_run(panicking_validator()).await;
    assert!(
        got.as_ref().is_some_and(|t| t.title == "new"),
        "after a v1 message whose validator step panicked in the intake check, the next message was not delivered within {WAIT:?} (got {got:?}, dead letter {letter:?})"
    );
    assert_eq!(letter.map(|l| l.envelope.type_version), Some(1));
}

/// docs/contracts.md: "Types with no steps are decoded as they are" (the bus), and the
/// validator checks an older version "as the chain brings it to each registered version".
/// For a type with no steps at all the bus decodes the older message as it is; the
/// validator given upcasters (for other types) refuses the same message (`not upcast: no
/// upcaster for ...`) although it is valid as it is: the node dead-letters what every typed
/// handler would decode.
#[tokio::test]
async fn an_older_version_of_a_type_without_steps_is_valid_where_the_bus_decodes_it() {
    // Upcasters for `Book` only; `Ticket` v2 → v3 was additive for this payload.
    let ups = Upcasters::new().step_for::<Book, _, _>(1, Ok::<_, String>);
    let payload = json!({"title": "t", "trail": "x", "stage": 1});
    let bus = Bus::builder().upcaster(ups.clone()).build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("tickets", move |t: Ticket, _| {
            let tx = tx.clone();
            async move { tx.send(t).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let report = bus
        .publish_envelope_and_wait(ticket(2, payload.clone()))
        .await
        .unwrap();
    assert_eq!(report.handled, 1, "the bus decodes it as it is: {report:?}");
    assert_eq!(next(&mut rx, "the ticket").await.trail, "x");

    let mut registry = Registry::new();
    registry
        .register::<Ticket>()
        .unwrap()
        .register::<Book>()
        .unwrap();
    let plain = Validator::new(&registry).unwrap();
    assert!(
        plain.check(&ticket(2, payload.clone())).deliver(),
        "without upcasters: checked as it is, valid"
    );
    let with_ups = Validator::new(&registry).unwrap().upcasters(ups);
    let verdict = with_ups.check(&ticket(2, payload));
    assert!(
        matches!(verdict, Verdict::Valid { .. }),
        "a v2 Ticket (no steps for Ticket) valid as it is and decoded by the bus, but the validator with upcasters says: {:?}",
        verdict.describe()
    );
    bus.shutdown(WAIT).await.unwrap();
}
