//! Review rev6: hostile and broken ZMTP peers against a bound PULL source (the `zeromq`
//! crate's, and the size-limited one speaking ZMTP itself). A peer that sends garbage, stops
//! mid-greeting or mid-frame, or announces a huge frame and vanishes must cost only its own
//! connection: the source keeps serving well-behaved peers, and shutdown does not hang.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::InMemoryDeadLetters;
use switchyard_pipeline::zmq::ZmqSource;
use switchyard_pipeline::{Pipeline, Runner, StageError, map_fn};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use zeromq::{Socket, SocketSend};

const WAIT: Duration = Duration::from_secs(60);

/// A ZMTP 3.0 NULL greeting (64 bytes) as a client.
fn greeting() -> Vec<u8> {
    let mut g = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    let mut mech = b"NULL".to_vec();
    mech.resize(20, 0);
    g.extend_from_slice(&mech);
    g.push(0); // as-server
    g.resize(64, 0);
    g
}

/// A READY command announcing a PUSH socket.
fn ready() -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&4u32.to_be_bytes());
    body.extend_from_slice(b"PUSH");
    let mut cmd = vec![0x04, body.len() as u8];
    cmd.extend_from_slice(&body);
    cmd
}

/// The hostile peers, each on its own connection, each closed after writing.
async fn hostile_peers(addr: &str) {
    let mut attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xFF; 5],                           // a greeting cut short
        greeting(),                              // greeting, then silence and close
        [greeting(), vec![0x04, 0xFF]].concat(), // a command announced, never sent
    ];
    // A message frame announcing 1 GiB, 10 bytes of it, then close.
    let mut huge = [greeting(), ready()].concat();
    huge.push(0x02);
    huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
    huge.extend_from_slice(&[7u8; 10]);
    attacks.push(huge);
    // A long frame with an absurd size (top bit set).
    let mut absurd = [greeting(), ready()].concat();
    absurd.push(0x02);
    absurd.extend_from_slice(&u64::MAX.to_be_bytes());
    attacks.push(absurd);
    for bytes in attacks {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    }
}

async fn survives(limit: Option<usize>) {
    let mut builder = ZmqSource::pull().name("hostile");
    if let Some(l) = limit {
        builder = builder.max_message_bytes(l);
    }
    let source = builder.bind("tcp://127.0.0.1:0").await.unwrap();
    let endpoint = source.endpoint().to_owned();
    let addr = endpoint.trim_start_matches("tcp://").to_owned();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let s = seen.clone();
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let mut running = Runner::new(Pipeline::new(map_fn("collect", move |b: Bytes| {
        s.lock().unwrap().push(b.to_vec());
        Ok::<_, StageError>(())
    })))
    .dead_letters(dlq)
    .start()
    .await
    .unwrap();
    running.spawn_source(source);

    hostile_peers(&addr).await;

    let mut push = zeromq::PushSocket::new();
    push.connect(&endpoint).await.unwrap();
    push.send(Bytes::from_static(b"after").into())
        .await
        .unwrap();
    let ok = running
        .monitor()
        .wait_until(WAIT, |m| m.completed() >= 1)
        .await;
    assert!(
        ok,
        "limit {limit:?}: a well-behaved peer was not served after the hostile ones: {}",
        running.monitor().snapshot()
    );
    assert_eq!(seen.lock().unwrap().as_slice(), &[b"after".to_vec()]);
    let report = tokio::time::timeout(WAIT, running.shutdown())
        .await
        .expect("shutdown hung");
    assert!(
        report.source_errors.is_empty(),
        "{:?}",
        report.source_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_do_not_stop_a_plain_pull_source() {
    survives(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_do_not_stop_a_size_limited_pull_source() {
    survives(Some(1024)).await;
}

/// A peer that is in the middle of a frame when the pipeline shuts down does not keep the
/// shutdown waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_peer_stuck_mid_frame() {
    for limit in [None, Some(1024usize)] {
        let mut builder = ZmqSource::pull().name("stuck");
        if let Some(l) = limit {
            builder = builder.max_message_bytes(l);
        }
        let source = builder.bind("tcp://127.0.0.1:0").await.unwrap();
        let addr = source.endpoint().trim_start_matches("tcp://").to_owned();
        let mut running = Runner::new(Pipeline::new(map_fn("drop", |_b: Bytes| {
            Ok::<_, StageError>(())
        })))
        .start()
        .await
        .unwrap();
        running.spawn_source(source);
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let mut partial = [greeting(), ready()].concat();
        partial.extend_from_slice(&[0x00, 100, 1, 2, 3]); // 100 announced, 3 sent
        s.write_all(&partial).await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(20), running.shutdown())
            .await
            .unwrap_or_else(|_| panic!("limit {limit:?}: shutdown hung on a stuck peer"));
        assert_eq!(report.monitor.completed, 0);
        drop(s);
    }
}
