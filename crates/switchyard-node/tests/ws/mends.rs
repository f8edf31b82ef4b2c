//! Every message a principal puts on the bus over the WebSocket counts against its
//! `limits.publish_rate`: `send` and `request` too, not only `publish`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use switchyard::{Envelope, Outcome, handler_fn};

use crate::support::TestNode;

/// Over the rate, a `send` or `request` is answered with the error op (`rate_limited`, its
/// `id` echoed) and its handler does not run. Looped (up to 20 calls) rather than counting
/// exact tokens, so a token refilled on a slow machine cannot make it flaky.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_and_requests_count_against_the_publish_rate() {
    let node = TestNode::start("[limits.publish_rate]\nper_second = 1\nburst = 3\n").await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    node.bus
        .handle_envelope(
            "doubler",
            "math.double",
            handler_fn(move |env: Envelope| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let reply = env.reply(b"{}".to_vec());
                    Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let mut c = node.client().await;
    for op in ["send", "request"] {
        let mut refused = None;
        for i in 0..20 {
            let v = c
                .ask(json!({"op": op, "id": i, "topic": "math.double", "payload": {}}))
                .await;
            if v["op"] == "reply" {
                continue;
            }
            refused = Some(v);
            break;
        }
        let v = refused.unwrap_or_else(|| {
            panic!(
                "{op}: 20 calls all answered by a principal limited to 1/s (burst 3): \
                 commands do not count against limits.publish_rate"
            )
        });
        assert_eq!(v["op"], "error", "{v}");
        assert_eq!(v["error"]["kind"], "rate_limited", "{v}");
        assert!(!v["id"].is_null(), "the error op echoes the call's id: {v}");
        let before = handled.load(Ordering::SeqCst);
        let v = c
            .ask(json!({"op": "publish", "id": "p", "topic": "math.events", "payload": {}}))
            .await;
        assert_eq!(
            v["error"]["kind"], "rate_limited",
            "one bucket for all: {v}"
        );
        assert_eq!(handled.load(Ordering::SeqCst), before);
    }
    node.stop().await;
}
