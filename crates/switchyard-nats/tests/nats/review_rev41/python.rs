//! Cross-checks with the Python example of docs/interop.md, run with nats-py
//! (`python3 -c …`). Skipped loudly when nats-py is not installed, unless `CI` is set.

use std::sync::Arc;
use std::time::Duration;

use switchyard::{Envelope, Topic};
use switchyard_conformance::Setup;
use tokio::sync::Notify;

use super::commands::doubler;
use super::{bus_on, collect, event_transport, next, skip};

/// True when `python3` can import nats-py; outside CI a missing one skips loudly.
fn nats_py() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !ci,
            "nats-py (python3 -c 'import nats') is missing under CI"
        );
        eprintln!("\n!!!!!!!! SKIPPING PYTHON INTEROP: nats-py is not installed !!!!!!!!\n");
    }
    ok
}

/// Runs `script` with `args`; its stdout as JSON.
async fn python(script: &'static str, args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("python did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const EXAMPLE: &str = r#"
import asyncio, json, sys
import nats

async def main():
    ns = sys.argv[1]
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    out = {}
    await js.publish(
        f"{ns}.events.orders",
        json.dumps({"id": 7, "sku": "py-7"}).encode(),
        headers={
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=opaque",
            "X-Correlation-Id": "abc-123",
        },
    )
    reply = await nc.request(f"_sy.cmd.{ns}.double", b'{"n": 21}', timeout=5)
    out["ok"] = [reply.headers["Sy-Status"], json.loads(reply.data)]
    reply = await nc.request(f"_sy.cmd.{ns}.double", b'{"n": -1}', timeout=5)
    out["failed"] = [reply.headers["Sy-Status"], reply.headers["Sy-Error"]]
    try:
        await nc.request(f"_sy.cmd.{ns}.nobody", b"{}", timeout=5)
        out["nobody"] = "answered"
    except nats.errors.NoRespondersError:
        out["nobody"] = "no-responders"
    print(json.dumps(out))
    await nc.close()

asyncio.run(main())
"#;

/// docs/interop.md "Example (Python, nats-py)", run as written (topics under a namespace of
/// this test): the event reaches a handler of `<ns>.events.#` with its headers intact, the
/// command is answered `ok` with 42, the failing one `failed` with the handler's own
/// message, and a topic nobody serves raises `NoRespondersError`.
#[tokio::test]
async fn the_python_example_of_interop_md_works_as_written() {
    if skip() || !nats_py() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_events, mut rx) = collect(&bus, "py-events", &format!("{ns}.events.#")).await;
    let (cmd_bus, _cmd, _seen) = doubler(&ns, Arc::new(Notify::new())).await;
    let out = python(EXAMPLE, vec![ns.clone()]).await;
    assert_eq!(out["ok"], serde_json::json!(["ok", 42]), "{out}");
    assert_eq!(out["failed"][0], "failed", "{out}");
    assert!(
        out["failed"][1]
            .as_str()
            .unwrap()
            .contains("negative input: n=-1"),
        "{out}"
    );
    assert_eq!(out["nobody"], "no-responders", "{out}");
    let env = next(&mut rx).await;
    assert_eq!(env.topic.as_str(), format!("{ns}.events.orders"));
    let body: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    assert_eq!(body, serde_json::json!({"id": 7, "sku": "py-7"}));
    assert_eq!(
        env.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(env.header("tracestate"), Some("vendor=opaque"));
    assert_eq!(env.header("X-Correlation-Id"), Some("abc-123"));
    cmd_bus.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

const READ_BACK: &str = r#"
import asyncio, json, sys
import nats

async def main():
    ns, subject = sys.argv[1], sys.argv[2]
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    msg = await js.get_last_msg(ns, subject)
    print(json.dumps({"headers": dict(msg.headers or {}), "data": msg.data.decode()}))
    await nc.close()

asyncio.run(main())
"#;

/// interop.md: "What switchyard publishes carries the same headers: its own user headers
/// under their own name when NATS carries them as they are (`H-<name>`, percent-encoded,
/// otherwise)"; ids under `Nats-Msg-Id`. nats-py reads a switchyard publish from the stream
/// with those names.
#[tokio::test]
async fn nats_py_reads_a_switchyard_publish_with_the_documented_headers() {
    if skip() || !nats_py() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let topic = format!("{ns}.out.orders");
    let env = Envelope::new(Topic::new(&topic).unwrap(), r#"{"id":8}"#)
        .with_header("X-Correlation-Id", "abc-123")
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("note", "two words\n");
    bus.publish_envelope(env.clone()).await.unwrap();
    let out = python(READ_BACK, vec![ns, topic]).await;
    let h = &out["headers"];
    assert_eq!(out["data"], r#"{"id":8}"#, "{out}");
    assert_eq!(h["Nats-Msg-Id"], env.id.to_string(), "{out}");
    assert_eq!(h["X-Correlation-Id"], "abc-123", "{out}");
    assert_eq!(
        h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "{out}"
    );
    assert_eq!(h["H-note"], "two%20words%0A", "{out}");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
