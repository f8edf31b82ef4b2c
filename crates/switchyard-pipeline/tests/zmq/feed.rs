//! The sensor feed both ZeroMQ test suites push: the pipeline crate's (tests/zmq) and the
//! data-pipeline example's (its tests/sensors_zmq.rs includes this file by path).

use std::collections::BTreeSet;

use bytes::Bytes;
use zeromq::{Socket, SocketSend};

/// The Rust mirror of tests/py/publish.py's generator: (valid, payload) for message `i`.
pub fn message(i: u64, bad_every: u64) -> (bool, Vec<u8>) {
    if bad_every > 0 && i % bad_every == bad_every - 1 {
        let payload = match (i / bad_every) % 5 {
            0 => format!(r#"{{"id": {i}, "sensor": "trunc"#).into_bytes(),
            1 => format!(r#"{{"id": {i}, "value": 1.0}}"#).into_bytes(),
            2 => {
                let mut b = vec![0xff, 0xfe];
                b.extend_from_slice(i.to_string().as_bytes());
                b
            }
            3 => format!(r#"{{"id": {i}, "sensor": "s", "value": "hot"}}"#).into_bytes(),
            _ => format!(r#"{{"id": {i}, "sensor": "s", "value": 1.0, "unit": "rankine"}}"#)
                .into_bytes(),
        };
        return (false, payload);
    }
    let unit = ["c", "f", "k"][(i % 3) as usize];
    let body = format!(
        r#"{{"id": {i}, "sensor": "sensor-{}", "value": {}.0, "unit": "{unit}"}}"#,
        i % 7,
        20 + i % 13
    );
    (true, body.into_bytes())
}

/// What a publisher sent.
pub struct Sent {
    pub valid_ids: BTreeSet<u64>,
    pub malformed: Vec<Vec<u8>>,
}

pub async fn push_from_rust(endpoint: &str, count: u64, bad_every: u64) -> Sent {
    let mut push = zeromq::PushSocket::new();
    push.connect(endpoint).await.unwrap();
    let mut sent = Sent {
        valid_ids: BTreeSet::new(),
        malformed: Vec::new(),
    };
    for i in 0..count {
        let (ok, payload) = message(i, bad_every);
        if ok {
            sent.valid_ids.insert(i);
        } else {
            sent.malformed.push(payload.clone());
        }
        push.send(Bytes::from(payload).into()).await.unwrap();
    }
    sent
}
