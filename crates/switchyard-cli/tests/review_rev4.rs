//! Review rev4: `switchyard dlq replay --all` against a node whose list names a message once
//! per entry (two handlers gave up on it) and whose replay of that message fails: every
//! other message must still be replayed (or reported), and the exit code says the run was
//! not clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// The queue: (message id, handler) entries, oldest first; replays of `failing` fail.
#[derive(Default)]
struct Queue {
    entries: Vec<(String, String)>,
    failing: String,
    replayed: Vec<String>,
}

impl Queue {
    fn answer(&mut self, method: &str, target: &str, body: &[u8]) -> Value {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let q = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse::<usize>().ok())
        };
        match (method, path) {
            ("GET", "/v1/dlq") => {
                let (offset, limit) = (q("offset").unwrap_or(0), q("limit").unwrap_or(100));
                let items: Vec<Value> = self
                    .entries
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|(id, h)| json!({"id": id, "handler": h, "topic": "jobs.x"}))
                    .collect();
                json!({"total": self.entries.len(), "items": items})
            }
            ("POST", "/v1/dlq/replay") => {
                let v: Value = serde_json::from_slice(body).unwrap();
                let mut ids: Vec<String> = v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_owned())
                    .collect();
                ids.dedup(); // a page names a message once per entry; the node replays it once
                let (mut replayed, mut failed) = (0, Vec::new());
                for id in ids {
                    if id == self.failing {
                        failed.push(json!({"id": id, "error": "publish failed"}));
                    } else if self.entries.iter().any(|(i, _)| *i == id) {
                        self.entries.retain(|(i, _)| *i != id);
                        self.replayed.push(id);
                        replayed += 1;
                    }
                }
                json!({"replayed": replayed, "failed": failed})
            }
            _ => json!({"error": "not here"}),
        }
    }
}

/// Serves `queue` over HTTP/1.1 (keep-alive) on an ephemeral port until the test ends.
fn serve(queue: Arc<Mutex<Queue>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let queue = queue.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (method, target) =
                            (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).await.unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0u8; len];
                        reader.read_exact(&mut body).await.unwrap();
                        let answer = queue.lock().unwrap().answer(&method, &target, &body);
                        let text = answer.to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        reader.get_mut().write_all(response.as_bytes()).await.unwrap();
                    }
                });
            }
        });
    });
    url
}

#[test]
fn replay_all_replays_every_other_message_when_one_with_two_entries_fails() {
    let queue = Arc::new(Mutex::new(Queue {
        entries: vec![
            ("A".into(), "h1".into()),
            ("A".into(), "h2".into()),
            ("B".into(), "h1".into()),
            ("C".into(), "h1".into()),
        ],
        failing: "A".into(),
        replayed: Vec::new(),
    }));
    let url = serve(queue.clone());
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["dlq", "replay", "--all", "--batch", "2", "--url", &url])
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_CONFIG")
        .timeout(WAIT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "A failed: the exit code says so\n{stdout}"
    );
    let q = queue.lock().unwrap();
    assert_eq!(
        q.replayed,
        vec!["B".to_owned(), "C".to_owned()],
        "every message but the failing one was replayed\nstdout: {stdout}\nentries left: {:?}",
        q.entries
    );
}
