//! Issue 19, item 6 on the node: an `[encryption]` section makes the payloads of its topics
//! ciphertext in the log's files, while subscribers get the plaintext.

use std::path::Path;

use tokio::sync::mpsc;

use crate::common::{TestNode, client, forward, recv};

const MARKER: &str = "MARKER-3782-822463-10005";

fn grep_files(dir: &Path, needle: &[u8]) -> (bool, usize) {
    let mut found = false;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let (f, n) = grep_files(&entry.path(), needle);
            found |= f;
            files += n;
        } else {
            files += 1;
            found |= std::fs::read(entry.path())
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle);
        }
    }
    (found, files)
}

/// Publishes the marker through the gateway on a log-backed node, checks the subscriber got
/// the plaintext, stops the node and greps its data directory.
async fn marker_on_disk(encryption: &str) -> (bool, usize) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[transport]\nkind = \"log\"\ndata_dir = \"{}\"\n{encryption}",
        dir.path().join("data").display()
    );
    let node = TestNode::start(&toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = node
        .bus
        .subscribe("billing", "payments.#", forward(tx))
        .start()
        .await
        .unwrap();
    let body = format!(r#"{{"card": "{MARKER}"}}"#);
    let res = client()
        .post(node.url("/v1/publish/payments.charged"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let got = recv(&mut rx, "the published payment").await;
    assert_eq!(
        &got.payload[..],
        body.as_bytes(),
        "the subscriber gets plaintext"
    );
    assert_eq!(got.content_type(), "application/json");
    assert_eq!(got.header(switchyard_contracts::KEY_HEADER), None);
    node.stop().await.unwrap();
    grep_files(dir.path(), MARKER.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encryption_section_keeps_the_payloads_of_its_topics_off_the_disk() {
    let (found, files) = marker_on_disk("").await;
    assert!(
        files > 0 && found,
        "without encryption the marker is in the log's files"
    );
    let (found, files) = marker_on_disk(
        r#"
[encryption]
topics = ["payments.#"]
active = "k2"
[encryption.keys]
k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
k2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
"#,
    )
    .await;
    assert!(files > 0);
    assert!(!found, "with encryption the plaintext is nowhere on disk");
}
