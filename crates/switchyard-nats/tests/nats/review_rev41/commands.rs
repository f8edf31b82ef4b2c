//! Commands from a foreign client: a core NATS request to `_sy.cmd.<topic>` (docs/interop.md
//! "Commands"). Each test serves a topic of its own (`<ns>.double`) under the documented
//! default prefix.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Ctx, Kind, Message, Subscription};
use switchyard_conformance::Setup;
use switchyard_nats::NatsTransport;
use tokio::sync::{Notify, mpsc};

use super::{WAIT, default_config, get, headers, raw, skip};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Double {
    pub(crate) n: i64,
}

impl Message for Double {
    const TOPIC: &'static str = "rev41.double";
    const KIND: Kind = Kind::Command;
}

impl Command for Double {
    type Output = i64;
}

/// What the handler saw of one command.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) n: i64,
    pub(crate) id: String,
    pub(crate) tenant: Option<String>,
    pub(crate) left: Option<Duration>,
}

/// A bus serving `<ns>.double`: `n >= 0` doubles, `-1` fails, `-2` works for 5 s (past any
/// deadline), `-3` fails with a two-line message, `-4` waits for `release`.
pub(crate) async fn doubler(
    ns: &str,
    release: Arc<Notify>,
) -> (Bus, Subscription, mpsc::UnboundedReceiver<Seen>) {
    let nats = NatsTransport::connect(default_config()).await.unwrap();
    let bus = Bus::builder()
        .transport(nats)
        .max_attempts(2)
        .retry_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .handle(move |c: Double, ctx: Ctx| {
            let (tx, release) = (tx.clone(), release.clone());
            async move {
                let _ = tx.send(Seen {
                    n: c.n,
                    id: ctx.envelope().id.to_string(),
                    tenant: ctx.header("X-Tenant").map(str::to_owned),
                    left: ctx
                        .deadline()
                        .map(|d| d.saturating_duration_since(Instant::now())),
                });
                match c.n {
                    -1 => Err("negative input: n=-1".to_owned()),
                    -2 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(0)
                    }
                    -3 => Err("first line\r\nsecond line".to_owned()),
                    -4 => {
                        release.notified().await;
                        Ok(-8)
                    }
                    n => Ok(2 * n),
                }
            }
        })
        .pattern(&format!("{ns}.double"))
        .start()
        .await
        .unwrap();
    (bus, sub, rx)
}

/// A request as a foreign client sends it, with a 10 s client timeout.
pub(crate) async fn request(
    client: &async_nats::Client,
    subject: String,
    h: async_nats::HeaderMap,
    body: &str,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let req = async_nats::Request::new()
        .headers(h)
        .payload(body.to_owned().into())
        .timeout(Some(WAIT));
    client.send_request(subject, req).await
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// interop.md: "A command is a core NATS request to `_sy.cmd.<topic>` with the command's
/// JSON as the body. The reply body is the handler's result as JSON, and its headers say
/// how it went" (`Sy-Status` ok, `Sy-Reply` 1, `Sy-Attempts`, `Sy-Handler`); ids: "a flow
/// started elsewhere with correlation id `corr-42` keeps it through every switchyard handler
/// and follow-up message (each follow-up gets its own ULID as `Nats-Msg-Id`, the id it was
/// caused by as `Sy-Causation-Id`)"; free headers reach the handler.
#[tokio::test]
async fn a_foreign_request_gets_the_json_result_and_the_documented_reply_headers() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let h = headers(&[
        ("Nats-Msg-Id", "cmd-1"),
        ("Sy-Correlation-Id", "corr-9"),
        ("X-Tenant", "acme"),
    ]);
    let reply = request(&client, format!("_sy.cmd.{ns}.double"), h, r#"{"n":21}"#)
        .await
        .unwrap();
    let body: i64 = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body, 42);
    assert_eq!(get(&reply, "Sy-Status").as_deref(), Some("ok"));
    assert_eq!(get(&reply, "Sy-Reply").as_deref(), Some("1"));
    assert_eq!(get(&reply, "Sy-Attempts").as_deref(), Some("1"));
    assert!(
        get(&reply, "Sy-Handler").is_some_and(|h| !h.is_empty()),
        "{:?}",
        reply.headers
    );
    assert_eq!(get(&reply, "Sy-Correlation-Id").as_deref(), Some("corr-9"));
    assert_eq!(get(&reply, "Sy-Causation-Id").as_deref(), Some("cmd-1"));
    let reply_id = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .expect("the reply's own id");
    assert_ne!(reply_id, "cmd-1");
    let s = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.n, s.id.as_str(), s.tenant.as_deref()),
        (21, "cmd-1", Some("acme"))
    );
    assert_eq!(
        s.left, None,
        "no Sy-Deadline-Ms sent: no deadline for the handler"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "`failed` (the handler failed every attempt)", "`Sy-Error` | the failure's
/// message, one line of plain text", "`Sy-Attempts` | attempts the handler made"; the
/// Python example: `reply.headers["Sy-Status"] == "failed"`, `print(reply.headers["Sy-Error"])
/// # handler's own message`.
#[tokio::test]
async fn a_failing_handler_answers_failed_with_its_own_message_on_one_line() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, _seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let subject = format!("_sy.cmd.{ns}.double");
    for (body, message) in [
        (r#"{"n":-1}"#, "negative input: n=-1"),
        (r#"{"n":-3}"#, "first line  second line"),
    ] {
        let reply = request(&client, subject.clone(), headers(&[]), body)
            .await
            .unwrap();
        assert_eq!(
            get(&reply, "Sy-Status").as_deref(),
            Some("failed"),
            "{body}"
        );
        let error = get(&reply, "Sy-Error").unwrap_or_default();
        assert!(error.contains(message), "{error:?}");
        assert!(!error.contains(['\r', '\n']), "one line: {error:?}");
        assert_eq!(
            get(&reply, "Sy-Attempts").as_deref(),
            Some("2"),
            "max_attempts 2"
        );
        assert!(reply.payload.is_empty(), "no result body");
    }
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "When no process serves the topic, the server answers "no responders" at
/// once." The Python example: "`nats.errors.NoRespondersError` at once".
#[tokio::test]
async fn nobody_serving_the_topic_is_no_responders_at_once() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let client = raw().await;
    let started = Instant::now();
    let err = request(&client, format!("_sy.cmd.{ns}.nobody"), headers(&[]), "{}")
        .await
        .expect_err("an answer from nobody");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// interop.md: "Send `Sy-Deadline-Ms: <ms>` to bound the handler side too (it answers
/// `timeout` when it is up; the handler sees the deadline as `Ctx::deadline()`)."
#[tokio::test]
async fn sy_deadline_ms_bounds_the_handler_side_and_the_handler_sees_it() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let started = Instant::now();
    let reply = request(
        &client,
        format!("_sy.cmd.{ns}.double"),
        headers(&[("Sy-Deadline-Ms", "400")]),
        r#"{"n":-2}"#,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(
        get(&reply, "Sy-Status").as_deref(),
        Some("timeout"),
        "{:?}",
        reply.headers
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(4),
        "answered at the deadline, not at the handler's end (5 s): {took:?}"
    );
    let s = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    let left = s.left.expect("Ctx::deadline() set from Sy-Deadline-Ms");
    assert!(
        left <= Duration::from_millis(400) && left > Duration::ZERO,
        "{left:?}"
    );
    bus.shutdown(Duration::from_secs(1)).await.ok();
}

/// command.rs (rustdoc): the handler side "answers `timeout` without running a command that
/// arrives after `Sy-Deadline-At`"; interop.md lists `timeout` among the statuses. A foreign
/// command whose deadline has already passed is answered `timeout` and never reaches the
/// handler; neither does one with `Sy-Deadline-Ms: 0` (its deadline is up on arrival).
#[tokio::test]
async fn a_command_whose_deadline_already_passed_is_answered_timeout_and_not_run() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let subject = format!("_sy.cmd.{ns}.double");
    let past = (unix_ms() - 1_000).to_string();
    let reply = request(
        &client,
        subject.clone(),
        headers(&[("Sy-Deadline-At", &past)]),
        r#"{"n":1}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        get(&reply, "Sy-Status").as_deref(),
        Some("timeout"),
        "{:?}",
        reply.headers
    );
    let reply = request(
        &client,
        subject.clone(),
        headers(&[("Sy-Deadline-Ms", "0")]),
        r#"{"n":2}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        get(&reply, "Sy-Status").as_deref(),
        Some("timeout"),
        "{:?}",
        reply.headers
    );
    let reply = request(&client, subject, headers(&[]), r#"{"n":3}"#)
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"6");
    let first = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.n, 3, "a command past its deadline was run: {first:?}");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md (h-natsfix2): a `Sy-Deadline-Ms` or `Sy-Deadline-At` that is not a whole
/// number of milliseconds is answered `rejected`, `Sy-Error` naming the header and the
/// value, and the command is not run (it was run with no deadline at all).
#[tokio::test]
async fn a_malformed_deadline_header_is_answered_rejected_and_not_run() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let subject = format!("_sy.cmd.{ns}.double");
    let cases = [
        ("Sy-Deadline-Ms", "soon"),
        ("Sy-Deadline-Ms", "-5"),
        ("Sy-Deadline-Ms", "1.5"),
        ("Sy-Deadline-Ms", "300ms"),
        ("Sy-Deadline-At", "tomorrow"),
        ("Sy-Deadline-At", "-1"),
    ];
    for (i, (name, value)) in cases.iter().enumerate() {
        let body = format!(r#"{{"n":{}}}"#, i + 1);
        let reply = request(&client, subject.clone(), headers(&[(name, value)]), &body)
            .await
            .unwrap();
        let status = get(&reply, "Sy-Status");
        let error = get(&reply, "Sy-Error").unwrap_or_default();
        assert_eq!(
            status.as_deref(),
            Some("rejected"),
            "{name}: {value} answered {status:?} (Sy-Error {error:?}, body {:?})",
            String::from_utf8_lossy(&reply.payload)
        );
        assert!(
            error.starts_with(&format!("{name} must be a whole number of milliseconds"))
                && error.ends_with(&format!("got \"{value}\"")),
            "{name}: {value}: Sy-Error {error:?}"
        );
    }
    // A well-formed deadline still runs, and is the first command the handler sees.
    let reply = request(
        &client,
        subject,
        headers(&[("Sy-Deadline-Ms", "5000")]),
        r#"{"n":100}"#,
    )
    .await
    .unwrap();
    assert_eq!(&reply.payload[..], b"200", "{:?}", reply.headers);
    let first = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.n, 100,
        "a command with a malformed deadline ran: {first:?}"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md's status table: "`Sy-Status` | `ok`, or the failure: `failed` …, `rejected`,
/// `full`, `timeout`, `not-processed`, `no-handler`", "`Sy-Error` | the failure's message".
/// A body that is not the command's JSON is a failure a foreign client can read from those
/// documented values, never a hang; the handler is not called with it.
#[tokio::test]
async fn a_malformed_command_body_is_answered_with_a_documented_status() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let (bus, _sub, mut seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let client = raw().await;
    let subject = format!("_sy.cmd.{ns}.double");
    let documented = [
        "failed",
        "rejected",
        "full",
        "timeout",
        "not-processed",
        "no-handler",
    ];
    for body in ["not json", r#"{"m":1}"#, ""] {
        let reply = request(&client, subject.clone(), headers(&[]), body)
            .await
            .unwrap();
        let status = get(&reply, "Sy-Status").unwrap_or_default();
        let error = get(&reply, "Sy-Error").unwrap_or_default();
        assert!(
            documented.contains(&status.as_str()),
            "body {body:?}: Sy-Status {status:?} is not one interop.md documents \
             (Sy-Error {error:?})"
        );
        assert!(
            error.contains("decode"),
            "body {body:?}: Sy-Error {error:?}"
        );
    }
    bus.run_until_idle().await;
    assert!(
        seen.try_recv().is_err(),
        "the handler got a malformed command"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A production bus's promise (NATS request/reply, MassTransit request client): a requester
/// that disconnects before its answer does not hurt the responder. The command still runs
/// once; answering an inbox nobody listens on any more costs nothing; the next foreign
/// request is answered at once.
#[tokio::test]
async fn a_foreign_sender_that_goes_away_before_the_answer_leaves_the_handler_serving() {
    if skip() {
        return;
    }
    let ns = Setup::new().namespace;
    let release = Arc::new(Notify::new());
    let (bus, _sub, mut seen) = doubler(&ns, release.clone()).await;
    let subject = format!("_sy.cmd.{ns}.double");
    let gone = raw().await;
    let inbox = gone.new_inbox();
    let _answers = gone.subscribe(inbox.clone()).await.unwrap();
    gone.publish_with_reply(subject.clone(), inbox, r#"{"n":-4}"#.into())
        .await
        .unwrap();
    gone.flush().await.unwrap();
    let s = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.n, -4);
    drop(_answers);
    gone.drain().await.unwrap();
    release.notify_one();
    let client = raw().await;
    let started = Instant::now();
    let reply = request(&client, subject, headers(&[]), r#"{"n":4}"#)
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"8");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let next = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.n, 4, "the abandoned command ran again: {next:?}");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
