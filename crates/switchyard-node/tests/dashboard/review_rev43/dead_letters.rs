//! Review rev43, dead letters: binary / HTML / hostile bytes shown safely, replay and purge
//! from the page (one, a selection, "Purge all matching" with a filter), filters.

use switchyard::{Envelope, Outcome, handler_fn};

use super::super::common::{MEMORY, TestNode, client};
use super::super::{BROWSER, browser};
use super::{json, judging, post, run};

/// The hostile and binary messages of the dead-letter tests, and the subscriptions that
/// dead-letter them: `vault` (rejects anything not JSON or with `why`; acks a replay),
/// `other` (rejects with `why`; acks a replay) and `stubborn` (rejects everything).
async fn dead_letter_node() -> (TestNode, Vec<String>) {
    let node = TestNode::start(MEMORY).await;
    judging(&node, "vault", "vault.#", 1).await;
    judging(&node, "other", "other.#", 1).await;
    // `stubborn` rejects everything, replays too.
    node.bus
        .subscribe(
            "stubborn",
            "stubborn.#",
            handler_fn(|_env: Envelope| async {
                Ok::<_, std::convert::Infallible>(Outcome::reject("still out of stock"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let (s, _) = post(
        &http,
        &node,
        "stubborn.x",
        "application/json",
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(s, 202, "stubborn");
    let mut binary = vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0xc3, 0x28];
    binary.extend_from_slice(
        b"<img src=x onerror=window.__pwned=1></script><script>window.__pwned=2</script>",
    );
    let html = b"<script>window.__pwned=3</script><img src=x onerror=window.__pwned=4>".to_vec();
    let xss = "<img src=x onerror=window.__pwned=5>";
    let (s, _) = post(
        &http,
        &node,
        "vault.bin",
        "application/octet-stream",
        &[],
        binary,
    )
    .await;
    assert_eq!(s, 202, "binary");
    let (s, _) = post(&http, &node, "vault.html", "text/html", &[], html).await;
    assert_eq!(s, 202, "html");
    let hostile = serde_json::json!({"why": format!("refused {xss}"), "note": xss});
    let (s, _) = post(
        &http,
        &node,
        "vault.json",
        "application/json",
        &[("x-meta-note", xss), ("x-source", xss)],
        hostile.to_string().into(),
    )
    .await;
    assert_eq!(s, 202, "hostile json");
    // Topic names an operator may meet: unicode, a quote, markup. Those the gateway takes
    // must show literally.
    let mut topics = Vec::new();
    for (raw, encoded) in [
        ("vault.café", "vault.caf%C3%A9"),
        ("vault.a\"b", "vault.a%22b"),
        ("vault.<b>x", "vault.%3Cb%3Ex"),
    ] {
        let (s, body) = post(
            &http,
            &node,
            encoded,
            "application/json",
            &[],
            br#"{"why": "odd topic"}"#.to_vec(),
        )
        .await;
        println!("publish to {raw:?}: {s} {body}");
        if s == 202 {
            topics.push(raw.to_owned());
        }
    }
    for (topic, n) in [("other.a", 0), ("other.a", 1), ("other.b", 2)] {
        let body = format!(r#"{{"n": {n}, "why": "other refused {n}"}}"#);
        let (s, _) = post(&http, &node, topic, "application/json", &[], body.into()).await;
        assert_eq!(s, 202);
    }
    node.bus.run_until_idle().await;
    (node, topics)
}

/// Docs (Dashboard): "Dead letters (/v1/dlq with topic / subscription / error / since / until
/// filters, inspect, replay or purge one or a selection after a confirmation; after a replay
/// the page follows the replayed ids ... and says "handled by <subscription> ✓"". Binary,
/// non-UTF-8 and HTML payloads and hostile headers are shown as text (hex for bytes) and never
/// run; a replay from the page brings the message back to its handler and the counts drop; a
/// purge from the page removes exactly that dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_show_bytes_safely_and_replay_and_purge_from_the_page() {
    if browser::browser_or_skip("rev43 dlq").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let (node, topics) = dead_letter_node().await;
    let http = client();
    let total = json(&http, &node, "/v1/dlq?limit=1").await["total"].clone();
    assert_eq!(total, 7 + topics.len(), "dead letters before the page");
    let topics = topics.join("\n");
    let out = run(&node, "dlq", &[("ODD_TOPICS", topics.as_str())], 60).await;
    assert!(out.contains("rev43: ok"), "{out}");
    // The page replayed vault.json (handled) and purged vault.html: both gone, the rest stay.
    let left = json(&http, &node, "/v1/dlq?limit=1000").await;
    let left: Vec<_> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"]["topic"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !left.iter().any(|t| t == "vault.json" || t == "vault.html"),
        "{left:?}"
    );
    assert!(left.iter().any(|t| t == "vault.bin"), "{left:?}");
    node.stop().await.unwrap();
}

/// The dead-letter view's "Purge all matching" button with the Subscription filter applied
/// (the list shows only `other`'s three dead letters): an operator expects exactly the listed
/// (matching) dead letters to go, and `vault`'s to stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_all_matching_purges_only_what_the_filter_lists() {
    if browser::browser_or_skip("rev43 purge filter").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let (node, _) = dead_letter_node().await;
    let http = client();
    let before = json(&http, &node, "/v1/dlq?limit=1").await["total"]
        .as_u64()
        .unwrap();
    let out = run(&node, "purge-filter", &[], 50).await;
    assert!(out.contains("rev43: ok"), "{out}");
    let after = json(&http, &node, "/v1/dlq?limit=1").await["total"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before - 3, "only other's 3 dead letters purged");
    node.stop().await.unwrap();
}

/// Docs (Dashboard): "replay or purge one or a selection after a confirmation; after a replay
/// the page follows the replayed ids ... and says "handled by <subscription> ✓" or
/// "dead-lettered again: <error>"". A selection of three (two that the handler now takes,
/// one it rejects again): the page says which is which, the two leave the list, the third
/// is listed again, and the card counts one dead letter where there were three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_selection_says_which_were_handled_and_which_came_back() {
    if browser::browser_or_skip("rev43 replay selection").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let (node, _) = dead_letter_node().await;
    let http = client();
    let before = json(&http, &node, "/v1/dlq?limit=1").await["total"]
        .as_u64()
        .unwrap();
    let before = before.to_string();
    let out = run(&node, "replay-selection", &[("TOTAL", before.as_str())], 50).await;
    assert!(out.contains("rev43: ok"), "{out}");
    let stubborn = json(&http, &node, "/v1/dlq?subscription=stubborn").await;
    assert_eq!(stubborn["total"], 1, "{stubborn}");
    assert_eq!(
        stubborn["items"][0]["message"]["headers"]["replay-count"], "1",
        "{stubborn}"
    );
    let other = json(&http, &node, "/v1/dlq?topic=other.a").await;
    assert_eq!(other["total"], 0, "{other}");
    node.stop().await.unwrap();
}
