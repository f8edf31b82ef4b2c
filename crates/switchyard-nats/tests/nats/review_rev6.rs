//! Review rev6: outside-in attacks on commands and requests across processes (command.rs,
//! request.rs): exactly one handler, the result back, deadlines, and header interop with a
//! plain NATS client (nats-py, run as a child process, and raw `async_nats`).
//!
//! Every test uses its own subject prefix, so tests on the shared server never meet.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message, SendError};
use switchyard_core::{Envelope, Pattern, Topic};
use switchyard_nats::{NatsConfig, NatsTransport, RequestError};

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

fn prefix(what: &str) -> String {
    format!("_sy.rev6{what}.{}", switchyard::MessageId::new())
}

fn config(cmd_prefix: &str) -> NatsConfig {
    let mut c = NatsConfig::new(SHARED_URL);
    c.command_prefix = cmd_prefix.to_owned();
    c.request_prefix = format!("{cmd_prefix}.req");
    c
}

async fn bus(config: NatsConfig) -> (Bus, NatsTransport) {
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder()
        .transport(nats.clone())
        .max_attempts(1)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    (bus, nats)
}

/// True when nats-py can be imported (skips loudly otherwise, fails under CI).
fn nats_py_available() -> bool {
    let ok = Process::new("python3")
        .args(["-c", "import nats"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "nats-py is not installed under CI");
        eprintln!("\n!!!!!!!! SKIPPING: nats-py not installed (pip install nats-py) !!!!!!!!\n");
    }
    ok
}

/// A nats-py responder on `subject` (queue group `switchyard`, as a switchyard handler
/// process would be) answering the n-th request with the n-th `(headers, body)` of
/// `answers`. Prints `ready` once the server has its subscription (flush is a PING/PONG),
/// then one JSON line per request it got (its headers).
const PY_RESPONDER: &str = r#"
import asyncio, json, sys
import nats

async def main():
    subject, answers = sys.argv[1], json.loads(sys.argv[2])
    nc = await nats.connect("nats://127.0.0.1:4222")
    done = asyncio.Event()
    seen = []
    async def cb(msg):
        headers, body = answers[len(seen)]
        seen.append(msg)
        print(json.dumps(dict(msg.headers or {})), flush=True)
        await msg.respond(body.encode()) if headers is None else await nc.publish(msg.reply, body.encode(), headers=headers)
        if len(seen) == len(answers):
            done.set()
    await nc.subscribe(subject, queue="switchyard", cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 30)
    await nc.flush()
    await nc.close()

asyncio.run(main())
"#;

/// A nats-py requester sending each `(headers, body)` of `requests` to `subject` and
/// printing one JSON line per answer: `{"headers": {...}, "body": "..."}` or `{"error": "..."}`.
const PY_REQUESTER: &str = r#"
import asyncio, json, sys, time
import nats

async def main():
    subject, requests = sys.argv[1], json.loads(sys.argv[2])
    nc = await nats.connect("nats://127.0.0.1:4222")
    for headers, body in requests:
        start = time.monotonic()
        try:
            r = await nc.request(subject, body.encode(), timeout=20, headers=headers)
            out = {"headers": dict(r.headers or {}), "body": r.data.decode(errors="replace")}
        except Exception as e:
            out = {"error": type(e).__name__ + ": " + str(e)}
        out["secs"] = time.monotonic() - start
        print(json.dumps(out), flush=True)
    await nc.close()

asyncio.run(main())
"#;

struct Py {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Py {
    fn spawn(script: &str, subject: &str, json: &serde_json::Value) -> Self {
        let mut child = Process::new("python3")
            .args(["-c", script, subject, &json.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next line the script printed (blocking read on a blocking thread).
    async fn line(&mut self) -> String {
        tokio::task::block_in_place(|| self.lines.next())
            .expect("python ended early")
            .unwrap()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nats-py responder (not switchyard) answering commands with the documented headers: each
/// failure status comes back as the same typed `SendError`, the attempts and handler name as
/// it said, and an error with its own text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_py_responder_with_documented_failure_headers_gives_typed_errors() {
    if shared_unavailable().is_some() || !nats_py_available() {
        return;
    }
    let p = prefix("pyfail");
    let answers = serde_json::json!([
        [{"Sy-Status": "failed", "Sy-Error": "py says no", "Sy-Attempts": "3"}, ""],
        [{"Sy-Status": "rejected", "Sy-Error": "/n: must be even"}, ""],
        [{"Sy-Status": "no-handler"}, ""],
        [{"Sy-Status": "full", "Sy-Handler": "py-worker"}, ""],
        [{"Sy-Status": "timeout", "Sy-Deadline-Ms": "250"}, ""],
    ]);
    let mut py = Py::spawn(PY_RESPONDER, &format!("{p}.calc.double"), &answers);
    assert_eq!(py.line().await, "ready");
    let (sender, _n) = bus(config(&p)).await;

    let r = sender.send(Double { n: 1 }).await;
    assert!(
        matches!(&r, Err(SendError::Failed { error, attempts: 3 }) if error == "py says no"),
        "{r:?}"
    );
    // The command went out with the documented headers.
    let headers: serde_json::Value = serde_json::from_str(&py.line().await).unwrap();
    assert_eq!(headers["Sy-Kind"], "command", "{headers}");

    let r = sender.send(Double { n: 2 }).await;
    assert!(
        matches!(&r, Err(SendError::Rejected { reason }) if reason == "/n: must be even"),
        "{r:?}"
    );
    let r = sender.send(Double { n: 3 }).await;
    assert!(matches!(&r, Err(SendError::NoHandler { .. })), "{r:?}");
    let r = sender.send(Double { n: 4 }).await;
    assert!(
        matches!(&r, Err(SendError::Full { handler }) if handler == "py-worker"),
        "{r:?}"
    );
    let r = sender.send(Double { n: 5 }).await;
    assert!(
        matches!(&r, Err(SendError::Timeout { deadline }) if *deadline == Duration::from_millis(250)),
        "{r:?}"
    );
}

/// A plain responder that answers without any switchyard header: its body is the typed
/// result (the crate docs: "a reply without `Sy-Status` is taken as the reply envelope").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_py_responder_without_headers_answers_a_typed_command() {
    if shared_unavailable().is_some() || !nats_py_available() {
        return;
    }
    let p = prefix("pyplain");
    let answers = serde_json::json!([[null, "42"]]);
    let mut py = Py::spawn(PY_RESPONDER, &format!("{p}.calc.double"), &answers);
    assert_eq!(py.line().await, "ready");
    let (sender, _n) = bus(config(&p)).await;
    assert_eq!(sender.send(Double { n: 21 }).await.unwrap(), 42);
}

/// DEFECT. interop.md documents a command reply as "the handler's result as JSON" in the
/// body with `Sy-Status: ok`, `Sy-Attempts`, `Sy-Handler`. A nats-py responder that answers
/// with exactly those headers (what a switchyard handler sends, as the docs list it) has its
/// body thrown away: the result is only read when the undocumented `Sy-Reply: 1` is present.
///
/// Expected: `send(Double { n: 21 })` returns `Ok(42)`.
/// Observed (4 of 4 runs): `expected Ok(42), got Err(Codec(CodecError { direction: Decode,
/// type_name: "u64", source: Error("invalid type: null, expected u64", ...) }))`.
/// Suspected cause: src/command.rs `decode_result` (line 389), the `"ok"` arm reads the body only when
/// `Sy-Reply == "1"` (a header interop.md does not list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_py_responder_with_documented_ok_headers_returns_its_body() {
    if shared_unavailable().is_some() || !nats_py_available() {
        return;
    }
    let p = prefix("pyok");
    let answers = serde_json::json!([
        [{"Sy-Status": "ok", "Sy-Attempts": "1", "Sy-Handler": "py"}, "42"],
    ]);
    let mut py = Py::spawn(PY_RESPONDER, &format!("{p}.calc.double"), &answers);
    assert_eq!(py.line().await, "ready");
    let (sender, _n) = bus(config(&p)).await;
    let r = sender.send(Double { n: 21 }).await;
    assert!(matches!(r, Ok(42)), "expected Ok(42), got {r:?}");
}

/// nats-py as the sender: an undecodable body, a deadline that is not a number (`rejected`)
/// and one too large for any clock (no deadline) each get a typed answer at once (never the
/// 20 s the client is willing to wait), and a valid command still gets its JSON result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_py_sender_with_bad_input_gets_typed_answers_promptly() {
    if shared_unavailable().is_some() || !nats_py_available() {
        return;
    }
    let p = prefix("pysend");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|c: Double, _ctx| async move { Ok::<_, String>(c.n * 2) })
        .start()
        .await
        .unwrap();
    let requests = serde_json::json!([
        [{}, "this is not json"],
        [{"Sy-Deadline-Ms": "soon"}, "{\"n\": 4}"],
        [{"Sy-Deadline-Ms": "99999999999999999999999"}, "{\"n\": 5}"],
        [{}, "{\"n\": 21}"],
    ]);
    let mut py = Py::spawn(PY_REQUESTER, &format!("{p}.calc.double"), &requests);
    let mut answers = Vec::new();
    for _ in 0..4 {
        let v: serde_json::Value = serde_json::from_str(&py.line().await).unwrap();
        assert!(v["secs"].as_f64().unwrap() < 5.0, "slow answer: {v}");
        answers.push(v);
    }
    let status = |i: usize| {
        answers[i]["headers"]["Sy-Status"]
            .as_str()
            .map(str::to_owned)
    };
    let undecodable = status(0);
    assert!(
        matches!(
            undecodable.as_deref(),
            Some("rejected" | "codec" | "failed" | "not-processed")
        ),
        "undecodable body: {}",
        answers[0]
    );
    assert!(
        !answers[0]["headers"]["Sy-Error"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "an undecodable command says why: {}",
        answers[0]
    );
    // A deadline that is not a number is refused, not run without a deadline
    // (h-natsfix2, docs/interop.md; before, it was run and answered `ok`).
    assert_eq!(status(1).as_deref(), Some("rejected"), "{}", answers[1]);
    assert_eq!(
        answers[1]["headers"]["Sy-Error"],
        "Sy-Deadline-Ms must be a whole number of milliseconds, got \"soon\""
    );
    assert_eq!(status(2).as_deref(), Some("ok"), "{}", answers[2]);
    assert_eq!(answers[2]["body"], "10");
    assert_eq!(status(3).as_deref(), Some("ok"), "{}", answers[3]);
    assert_eq!(answers[3]["body"], "42");
}

/// A handler that panics in another process: the sender gets a typed failure at once (not
/// a wait for the command timeout), and the handler process keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_handler_that_panics_answers_failed_and_keeps_serving() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("panic");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|c: Double, _ctx| async move {
            assert!(c.n != 13, "unlucky number");
            Ok::<_, String>(c.n * 2)
        })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(config(&p)).await;
    let start = Instant::now();
    let r = sender.send(Double { n: 13 }).await;
    assert!(start.elapsed() < Duration::from_secs(5), "{r:?}");
    match r {
        Err(SendError::Failed { error, .. }) => {
            assert!(error.contains("unlucky number"), "{error}");
        }
        other => panic!("expected Failed with the panic's message, got {other:?}"),
    }
    assert_eq!(sender.send(Double { n: 4 }).await.unwrap(), 8);
}

/// A failure whose message spans lines and holds non-ASCII comes back as one readable line,
/// its characters intact.
#[tokio::test]
async fn a_multiline_non_ascii_failure_comes_back_on_one_line() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("text");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|_c: Double, _ctx| async move {
            Err::<u64, _>("  première ligne\r\nseconde: échec ✗ 100%  ".to_owned())
        })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(config(&p)).await;
    match sender.send(Double { n: 1 }).await {
        Err(SendError::Failed { error, .. }) => {
            assert!(
                error.contains("première ligne") && error.contains("seconde: échec ✗ 100%"),
                "{error:?}"
            );
            assert!(!error.contains('\n') && !error.contains('\r'), "{error:?}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// A zero deadline is a deadline, not "wait forever" and not a panic: `Timeout` at once.
#[tokio::test]
async fn a_zero_deadline_times_out_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("zero");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|_c: Double, _ctx| async move {
            std::future::pending::<()>().await;
            Ok::<u64, String>(0)
        })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(config(&p)).await;
    let start = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        sender.request(Double { n: 1 }, Duration::ZERO),
    )
    .await
    .expect("a zero deadline hung");
    assert!(matches!(r, Err(SendError::Timeout { .. })), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// Exactly one handler per command topic in a process: a second registration for the same
/// topic is refused with a typed error (not served twice, not silently replaced).
#[tokio::test]
async fn a_second_handler_for_the_same_command_topic_is_refused() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("twice");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|c: Double, _ctx| async move { Ok::<_, String>(c.n * 2) })
        .start()
        .await
        .unwrap();
    let second = handler_bus
        .handle(|c: Double, _ctx| async move { Ok::<_, String>(c.n * 3) })
        .start()
        .await;
    assert!(second.is_err(), "a second handler was accepted");
    let (sender, _sn) = bus(config(&p)).await;
    assert_eq!(sender.send(Double { n: 5 }).await.unwrap(), 10);
}

/// A plain responder answering a request with a `Sy-Topic` that is not a topic: a typed
/// `InvalidReply`, not a panic and not a reply on a made-up topic.
#[tokio::test]
async fn a_reply_with_an_invalid_topic_header_is_a_typed_error() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("badtopic");
    let nats = NatsTransport::connect(config(&p)).await.unwrap();
    let raw = async_nats::connect(SHARED_URL).await.unwrap();
    let mut sub = raw.subscribe(format!("{p}.req.svc.ask")).await.unwrap();
    raw.flush().await.unwrap();
    // flush only writes: a PING round trip on the responder's connection confirms the SUB.
    raw.request("_sy.rev6.none.ping", "".into()).await.ok();
    let responder = tokio::spawn(async move {
        let msg = sub.next().await.unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Sy-Topic", "not a topic!");
        raw.publish_with_headers(msg.reply.unwrap(), h, "x".into())
            .await
            .unwrap();
        raw.flush().await.unwrap();
    });
    let r = nats
        .request(
            Envelope::new(Topic::new("svc.ask").unwrap(), "q"),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(r, Err(RequestError::InvalidReply(_))), "{r:?}");
    responder.await.unwrap();
}

/// DEFECT (race). `respond` says it makes sure "the server has the interest before the
/// caller sends requests", but only flushes (writes the socket). command.rs documents why
/// that is not enough and does a server round trip; request.rs does not. A request sent
/// from another connection right after `respond` returned can be answered "no responders".
///
/// Expected: every request sent after `respond` returned gets its reply.
/// Observed (4 of 4 runs, at rounds 126, 13, 0, 9): `round 0: NoResponders { subject:
/// "_sy.rev6reach.<id>.req.svc.reach0" }`. With a round trip on the responder's connection
/// after `respond` (a request to a subject nobody serves), all 200 rounds pass.
/// Suspected cause: src/request.rs:119 `respond`, `self.inner.client.flush()` where command.rs
/// uses `server_round_trip()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_is_reachable_from_another_connection_once_respond_returned() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("reach");
    let server = NatsTransport::connect(config(&p)).await.unwrap();
    let client = NatsTransport::connect(config(&p)).await.unwrap();
    for i in 0..200u32 {
        let pattern = Pattern::new(&format!("svc.reach{i}")).unwrap();
        let mut stream = server.respond(&pattern, None).await.unwrap();
        let serve = tokio::spawn(async move {
            if let Some(req) = stream.next().await {
                let reply = req.envelope.reply("pong");
                req.reply(reply).await.unwrap();
            }
        });
        let r = client
            .request(
                Envelope::new(Topic::new(&format!("svc.reach{i}")).unwrap(), "ping"),
                Duration::from_secs(5),
            )
            .await;
        match r {
            Ok(env) => assert_eq!(env.payload.as_ref(), b"pong"),
            Err(e) => panic!("round {i}: {e:?}"),
        }
        serve.await.unwrap();
    }
}

struct Letters(tokio::sync::mpsc::UnboundedSender<switchyard::DeadLetter>);
impl switchyard::DeadLetterSink for Letters {
    fn put(&self, letter: switchyard::DeadLetter) {
        let _ = self.0.send(letter);
    }
}

/// A command from a plain NATS client whose body does not decode into the handler's type is
/// answered at once with a typed status and dead-lettered on the handler's side with its raw
/// bytes (nothing is lost, nothing runs).
#[tokio::test]
async fn an_undecodable_remote_command_is_dead_lettered_with_its_raw_bytes() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("dlq");
    let (tx, mut letters) = tokio::sync::mpsc::unbounded_channel();
    let nats = NatsTransport::connect(config(&p)).await.unwrap();
    let handler_bus = Bus::builder()
        .transport(nats)
        .max_attempts(1)
        .dead_letters(Letters(tx))
        .build()
        .unwrap();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r2 = ran.clone();
    let _sub = handler_bus
        .handle(move |c: Double, _ctx| {
            r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, String>(c.n * 2) }
        })
        .start()
        .await
        .unwrap();
    let raw = async_nats::connect(SHARED_URL).await.unwrap();
    let body: &[u8] = b"\xff\x00 not json {";
    let reply = raw
        .send_request(
            format!("{p}.calc.double"),
            async_nats::Request::new()
                .payload(bytes::Bytes::from_static(body))
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Sy-Status"))
        .map(|v| v.as_str().to_owned());
    assert!(
        matches!(
            status.as_deref(),
            Some("not-processed" | "codec" | "rejected" | "failed")
        ),
        "{status:?}"
    );
    let letter = tokio::time::timeout(Duration::from_secs(10), letters.recv())
        .await
        .expect("the undecodable command was not dead-lettered")
        .unwrap();
    assert_eq!(letter.envelope.payload.as_ref(), body, "{letter:?}");
    assert_eq!(letter.envelope.topic.as_str(), "calc.double");
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The raw request API with a zero deadline: `Timeout` at once, never a hang or a panic.
#[tokio::test]
async fn a_raw_request_with_a_zero_deadline_times_out_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("rzero");
    let server = NatsTransport::connect(config(&p)).await.unwrap();
    let _stream = server
        .respond(&Pattern::new("svc.slow").unwrap(), None)
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        server.request(
            Envelope::new(Topic::new("svc.slow").unwrap(), "q"),
            Duration::ZERO,
        ),
    )
    .await
    .expect("a zero deadline hung");
    assert!(
        matches!(
            r,
            Err(RequestError::Timeout { .. } | RequestError::NoResponders { .. })
        ),
        "{r:?}"
    );
}

/// A plain client's `Sy-Deadline-Ms: 0` (already expired) to a handler that never ends: the
/// handler side answers `timeout` at once, it does not hold the request open.
#[tokio::test]
async fn a_zero_deadline_header_is_answered_timeout_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix("hzero");
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|_c: Double, _ctx| async move {
            std::future::pending::<()>().await;
            Ok::<u64, String>(0)
        })
        .start()
        .await
        .unwrap();
    let raw = async_nats::connect(SHARED_URL).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sy-Deadline-Ms", "0");
    let start = Instant::now();
    let reply = raw
        .send_request(
            format!("{p}.calc.double"),
            async_nats::Request::new()
                .headers(headers)
                .payload("{\"n\":1}".into())
                .timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Sy-Status"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("timeout"));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
