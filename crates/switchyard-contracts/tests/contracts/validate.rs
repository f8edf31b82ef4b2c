//! Boundary validation: messages checked against the registered schema of their topic, per
//! topic pattern off / warn / enforce.

use serde::{Deserialize, Serialize};
use switchyard::{Envelope, IntakeVerdict, Message, Topic};
use switchyard_contracts::{
    Contract, Enforcement, JsonSchema, Registry, Upcasters, Validator, Verdict,
};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct OrderPlaced {
    order: u64,
    lines: Vec<Line>,
}
impl Message for OrderPlaced {
    const TOPIC: &'static str = "orders.placed";
    const VERSION: u32 = 2;
}
impl Contract for OrderPlaced {}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Audit {
    who: String,
}
impl Message for Audit {
    const TOPIC: &'static str = "audit.login";
}
impl Contract for Audit {}

fn validator() -> Validator {
    let mut registry = Registry::new();
    registry.register::<OrderPlaced>().unwrap();
    registry.register::<Audit>().unwrap();
    Validator::new(&registry)
        .unwrap()
        .mode("audit.#", Enforcement::Warn)
        .unwrap()
        .mode("orders.internal.#", Enforcement::Off)
        .unwrap()
}

fn foreign(topic: &str, payload: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), payload.to_owned())
}

#[test]
fn a_matching_payload_is_valid() {
    let v = validator();
    let env = foreign(
        "orders.placed",
        r#"{"order": 1, "lines": [{"sku": "a", "qty": 2}]}"#,
    );
    assert!(matches!(v.check(&env), Verdict::Valid { .. }));
    // A typed publish of the current version carries its type name and is checked as that.
    let env = OrderPlaced {
        order: 2,
        lines: vec![],
    }
    .to_envelope()
    .unwrap();
    let verdict = v.check(&env);
    assert!(verdict.deliver());
    assert!(
        matches!(verdict, Verdict::Valid { type_name } if type_name == OrderPlaced::type_name())
    );
}

#[test]
fn every_issue_is_named_with_its_path_and_enforced_topics_are_not_delivered() {
    let v = validator();
    let env = foreign(
        "orders.placed",
        r#"{"order": "seven", "lines": [{"sku": "a", "qty": -1}]}"#,
    );
    let verdict = v.check(&env);
    assert!(!verdict.deliver());
    let Verdict::Invalid {
        enforcement,
        issues,
        ..
    } = &verdict
    else {
        panic!("{verdict:?}");
    };
    assert_eq!(*enforcement, Enforcement::Enforce);
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert!(paths.contains(&"/order"), "{issues:?}");
    assert!(paths.contains(&"/lines/0/qty"), "{issues:?}");
    let text = verdict.describe().unwrap();
    assert!(text.contains("/order") && text.contains("seven"), "{text}");
    // A missing required field is named too.
    let Verdict::Invalid { issues, .. } = v.check(&foreign("orders.placed", r#"{"order": 1}"#))
    else {
        panic!("missing field accepted");
    };
    assert!(issues[0].reason.contains("lines"), "{issues:?}");
}

#[test]
fn a_payload_that_is_not_json_is_invalid() {
    let v = validator();
    let Verdict::Invalid { issues, .. } = v.check(&foreign("orders.placed", "\u{1}binary")) else {
        panic!("binary accepted");
    };
    assert_eq!(issues[0].path, "");
    assert!(issues[0].reason.starts_with("not JSON"), "{issues:?}");
}

#[test]
fn warn_topics_deliver_off_topics_and_unknown_topics_are_unchecked() {
    let v = validator();
    let verdict = v.check(&foreign("audit.login", r#"{"who": 5}"#));
    assert!(verdict.deliver(), "warn delivers");
    assert!(matches!(
        verdict,
        Verdict::Invalid {
            enforcement: Enforcement::Warn,
            ..
        }
    ));
    assert_eq!(
        v.enforcement(&Topic::new("orders.internal.x").unwrap()),
        Enforcement::Off
    );
    assert_eq!(
        v.check(&foreign("nothing.registered", "not even json")),
        Verdict::Unchecked
    );
    // The default mode covers the topics no pattern names.
    let off = validator().default_mode(Enforcement::Off);
    assert_eq!(
        off.check(&foreign("orders.placed", "{}")),
        Verdict::Unchecked
    );
    assert!(matches!(
        off.check(&foreign("audit.login", "{}")),
        Verdict::Invalid {
            enforcement: Enforcement::Warn,
            ..
        }
    ));
}

/// An older version of a registered type is not exempt from validation (before: `Unchecked`
/// for any payload, so a foreign publisher could pass anything by claiming version 1):
/// without upcasters it is checked as it is, with a first issue that says so.
#[test]
fn an_older_type_version_does_not_bypass_validation() {
    let v = validator();
    let mut env = foreign("orders.placed", r#"{"order": "x", "items": []}"#);
    env.type_name = Some(OrderPlaced::type_name().into());
    for version in [0, 1] {
        env.type_version = version;
        let verdict = v.check(&env);
        assert!(!verdict.deliver(), "version {version}: {verdict:?}");
        let Verdict::Invalid { issues, .. } = verdict else {
            panic!("version {version}: {verdict:?}");
        };
        assert!(
            issues[0]
                .reason
                .contains("older than every registered version"),
            "{issues:?}"
        );
        assert!(issues.iter().any(|i| i.path == "/order"), "{issues:?}");
    }
    // An old payload that fits the registered schema passes as it is.
    env.payload = r#"{"order": 1, "lines": []}"#.into();
    env.type_version = 1;
    assert!(matches!(v.check(&env), Verdict::Valid { .. }));
}

/// With the bus's upcasters, an older version is checked as they bring it to the registered
/// version: an old shape the chain turns into a valid one passes, one it does not (or a gap
/// in the chain) is invalid, and the message itself is unchanged.
#[test]
fn an_older_type_version_is_checked_as_upcast() {
    let ups = Upcasters::new().step_for::<OrderPlaced, _, _>(1, |mut v| {
        let items = v["items"].take();
        v["lines"] = items;
        Ok::<_, String>(v)
    });
    let v = validator().upcasters(ups);
    let mut env = foreign(
        "orders.placed",
        r#"{"order": 1, "items": [{"sku": "a", "qty": 2}]}"#,
    );
    env.type_name = Some(OrderPlaced::type_name().into());
    env.type_version = 1;
    assert!(
        matches!(v.check(&env), Verdict::Valid { .. }),
        "{:?}",
        v.check(&env)
    );
    assert!(std::str::from_utf8(&env.payload).unwrap().contains("items"));
    env.payload = r#"{"order": 1, "items": [{"sku": "a", "qty": -2}]}"#.into();
    let Verdict::Invalid { issues, .. } = v.check(&env) else {
        panic!("an invalid upcast result delivered");
    };
    assert_eq!(issues[0].path, "/lines/0/qty", "{issues:?}");
    // No step from version 0: the chain has a gap, so the message cannot be checked.
    env.type_version = 0;
    let Verdict::Invalid { issues, .. } = v.check(&env) else {
        panic!("a message the chain cannot bring up delivered");
    };
    assert!(issues[0].reason.starts_with("not upcast"), "{issues:?}");
    // The current version is checked as it is.
    env.type_version = 2;
    env.payload = r#"{"order": 1, "lines": []}"#.into();
    assert!(matches!(v.check(&env), Verdict::Valid { .. }));
}

#[test]
fn the_intake_verdict_rejects_enforced_warns_warned_and_accepts_the_rest() {
    let v = validator();
    let bad = v.intake_verdict(&foreign("orders.placed", r#"{"order": "x", "lines": []}"#));
    let IntakeVerdict::Reject(text) = bad else {
        panic!("{bad:?}");
    };
    assert!(text.contains("/order"), "{text}");
    assert!(text.contains("OrderPlaced"), "{text}");
    assert!(matches!(
        v.intake_verdict(&foreign("audit.login", r#"{"who": 5}"#)),
        IntakeVerdict::Warn(t) if t.contains("/who")
    ));
    assert_eq!(
        v.intake_verdict(&foreign(
            "orders.placed",
            r#"{"order": 1, "lines": [{"sku": "a", "qty": 2}]}"#
        )),
        IntakeVerdict::Accept
    );
    assert_eq!(
        v.intake_verdict(&foreign("orders.internal.x", "not json")),
        IntakeVerdict::Accept
    );
}

/// The validator plugged into a bus on a transport (the embedded log): what arrives without a
/// type name, as from a foreign publisher, is checked per topic mode before it is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_with_the_validator_as_intake_check_dead_letters_invalid_foreign_messages() {
    let wait = std::time::Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = switchyard::Bus::builder()
        .transport(log)
        .intake_check(validator().intake_check())
        .build()
        .unwrap();
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "seen",
            "#",
            switchyard::handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move { tx.send(env.payload).map_err(|e| e.to_string()) }
            }),
        )
        .start()
        .await
        .unwrap();
    let invalid = foreign(
        "orders.placed",
        r#"{"order": 1, "lines": [{"sku": 7, "qty": 2}]}"#,
    );
    let invalid_id = invalid.id.clone();
    for env in [
        invalid,
        foreign("audit.login", r#"{"who": 5}"#),
        foreign("orders.internal.x", "not json"),
        foreign(
            "orders.placed",
            r#"{"order": 2, "lines": [{"sku": "a", "qty": 2}]}"#,
        ),
    ] {
        bus.publish_envelope(env).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(wait, handled.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    tokio::time::timeout(wait, bus.run_until_idle())
        .await
        .unwrap();
    assert!(
        handled.try_recv().is_err(),
        "the invalid one is not handled"
    );
    assert!(got.iter().all(|p| !p.starts_with(br#"{"order": 1"#)));
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope.id, invalid_id);
    assert_eq!(letters[0].reason, switchyard::DeadLetterReason::Rejected);
    assert!(
        letters[0].error.contains("/lines/0/sku"),
        "{}",
        letters[0].error
    );
    let stats = sub.stats();
    assert_eq!((stats.intake_rejected, stats.intake_warned), (1, 1));
    bus.shutdown(wait).await.unwrap();
}

/// A payload with thousands of issues (review rev22): `issues` keeps every one, but the text
/// a refusal carries (`describe`, and so the bus's intake rejection) lists the first
/// `MAX_DESCRIBED_ISSUES` and counts the rest, so it does not grow with the payload.
#[test]
fn the_description_of_many_issues_lists_the_first_and_counts_the_rest() {
    use switchyard_contracts::MAX_DESCRIBED_ISSUES;
    let v = validator();
    let lines: Vec<String> = (0..5_000)
        .map(|_| r#"{"sku": 1, "qty": "x"}"#.to_owned())
        .collect();
    let env = foreign(
        "orders.placed",
        &format!(r#"{{"order": 1, "lines": [{}]}}"#, lines.join(",")),
    );
    let verdict = v.check(&env);
    let Verdict::Invalid { issues, .. } = &verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!(issues.len(), 10_000, "every issue is kept in the verdict");
    let text = verdict.describe().unwrap();
    assert!(text.len() < 4_096, "{} bytes: {}", text.len(), &text[..300]);
    let listed = MAX_DESCRIBED_ISSUES;
    assert_eq!(text.matches("; ").count(), listed, "{text}");
    assert!(text.contains("/lines/0/sku: "), "{text}");
    let last = &issues[listed - 1];
    assert!(text.contains(&last.to_string()), "{text}");
    assert!(!text.contains(&issues[listed].to_string()), "{text}");
    assert!(
        text.ends_with(&format!("and {} more (10000 issues)", 10_000 - listed)),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    // The bus's intake check rejects with that text.
    assert!(matches!(IntakeVerdict::from(&verdict), IntakeVerdict::Reject(t) if t == text));
    // A few issues: all listed, no count.
    let verdict = v.check(&foreign("orders.placed", r#"{"order": "x", "lines": []}"#));
    let text = verdict.describe().unwrap();
    assert!(
        text.contains("/order: ") && !text.contains("more"),
        "{text}"
    );
}

/// Task fixsmall: `check_summary` (what the gateway, ingest and the intake check use) formats
/// only the issues a refusal lists, yet reports the exact count and the same text as `check`.
#[test]
fn the_summary_check_counts_every_issue_and_describes_as_the_full_check() {
    use switchyard_contracts::MAX_DESCRIBED_ISSUES;
    let v = validator();
    let lines: Vec<String> = (0..3_000)
        .map(|_| r#"{"sku": 1, "qty": "x"}"#.to_owned())
        .collect();
    let env = foreign(
        "orders.placed",
        &format!(r#"{{"order": 1, "lines": [{}]}}"#, lines.join(",")),
    );
    let full = v.check(&env);
    let summary = v.check_summary(&env);
    let Verdict::Invalid {
        issues,
        issue_count,
        ..
    } = &summary
    else {
        panic!("{summary:?}");
    };
    assert_eq!(*issue_count, 6_000, "the count stays exact");
    assert_eq!(
        issues.len(),
        MAX_DESCRIBED_ISSUES,
        "only the listed ones are formatted"
    );
    let Verdict::Invalid {
        issues: all,
        issue_count: all_count,
        ..
    } = &full
    else {
        panic!("{full:?}");
    };
    assert_eq!((all.len(), *all_count), (6_000, 6_000));
    assert_eq!(&all[..MAX_DESCRIBED_ISSUES], &issues[..]);
    let text = summary.describe().unwrap();
    assert_eq!(Some(&text), full.describe().as_ref());
    assert!(text.ends_with("and 5980 more (6000 issues)"), "{text}");
    assert_eq!(
        IntakeVerdict::from(&summary),
        IntakeVerdict::from(&full),
        "the intake check refuses with the same text"
    );
    // A stray type name's note comes first and counts, as in the full check.
    let mut stray = env.clone();
    stray.type_name = Some("NoSuchType".into());
    let (s, f) = (v.check_summary(&stray), v.check(&stray));
    assert_eq!(s.describe(), f.describe());
    assert!(s.describe().unwrap().contains("(6001 issues)"), "{s:?}");
}
