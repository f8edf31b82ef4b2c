//! A PULL source with `max_message_bytes`: messages within the limit arrive (from PUSH peers
//! of the `zeromq` crate, bound or connected), an oversize one is dead-lettered by reference
//! and the peer keeps going.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::{DeadLetterReason, InMemoryDeadLetters};
use switchyard_pipeline::zmq::{LIMIT_HEADER, PEER_HEADER, SIZE_HEADER, TOPIC_HEADER, ZmqSource};
use switchyard_pipeline::{Pipeline, Runner, RunningPipeline, StageError, map_fn};
use zeromq::{Socket, SocketSend, ZmqMessage};

const WAIT: Duration = Duration::from_secs(60);

type Seen = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

async fn run(source: ZmqSource<Bytes>) -> (RunningPipeline<Bytes>, Seen, Arc<InMemoryDeadLetters>) {
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let mut running = Runner::new(Pipeline::new(map_fn("collect", move |b: Bytes| {
        s.lock().unwrap().push(b.to_vec());
        Ok::<_, StageError>(())
    })))
    .dead_letters(dlq.clone())
    .start()
    .await
    .unwrap();
    running.spawn_source(source);
    (running, seen, dlq)
}

/// Waits on the pipeline's monitor (woken by every counter change) until `completed`
/// messages went through and `rejected` were dead-lettered.
async fn wait_for(running: &RunningPipeline<Bytes>, completed: u64, rejected: u64) {
    let ok = running
        .monitor()
        .wait_until(WAIT, |m| {
            m.completed() >= completed && m.rejected() >= rejected
        })
        .await;
    assert!(ok, "{}", running.monitor().snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_limited_pull_takes_small_messages_and_dead_letters_big_ones_by_reference() {
    let source = ZmqSource::pull()
        .name("limited")
        .max_message_bytes(1024)
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = source.endpoint().to_owned();
    assert!(!endpoint.ends_with(":0"), "{endpoint}");
    let (running, seen, dlq) = run(source).await;

    let mut push = zeromq::PushSocket::new();
    push.connect(&endpoint).await.unwrap();
    push.send(Bytes::from_static(b"first").into())
        .await
        .unwrap();
    push.send(Bytes::from(vec![9u8; 10_000]).into())
        .await
        .unwrap();
    let mut multi = ZmqMessage::from(Bytes::from_static(b"readings"));
    multi.push_back(Bytes::from(vec![1u8; 1016])); // 8 + 1016 = the limit exactly
    push.send(multi).await.unwrap();
    push.send(Bytes::from_static(b"last").into()).await.unwrap();

    wait_for(&running, 3, 1).await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got[0], b"first");
    assert_eq!(
        got[1],
        vec![1u8; 1016],
        "a message at the limit goes through"
    );
    assert_eq!(
        got[2], b"last",
        "the peer keeps going after an oversize message"
    );
    let letter = &dlq.list()[0];
    assert_eq!(letter.reason, DeadLetterReason::Rejected);
    assert_eq!(letter.handler.as_deref(), Some("limited"));
    assert_eq!(letter.envelope.header(SIZE_HEADER), Some("10000"));
    assert_eq!(letter.envelope.header(LIMIT_HEADER), Some("1024"));
    assert!(
        letter
            .envelope
            .header(PEER_HEADER)
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    assert_eq!(
        letter.envelope.payload.as_ref(),
        &[9u8; 256][..],
        "its first 256 bytes"
    );
    assert!(
        letter
            .error
            .contains("10000 bytes is over max_message_bytes (1024 bytes)"),
        "{}",
        letter.error
    );
    drop(push);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_limited_pull_keeps_the_topic_frame() {
    let mut push = zeromq::PushSocket::new();
    let mut events = push.monitor();
    let bound = push.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let source = ZmqSource::pull()
        .max_message_bytes(64)
        .connect(&bound)
        .await
        .unwrap();
    // The PUSH side has the peer once it reports it accepted (the source's connect returns
    // when its own side is up: a send before this fails with "Not connected to peers").
    loop {
        let event = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut events))
            .await
            .expect("the PUSH socket accepts the source within the wait")
            .expect("the monitor stays open");
        if matches!(event, zeromq::SocketEvent::Accepted(..)) {
            break;
        }
    }
    let (running, seen, dlq) = run(source).await;
    // Multi-frame: the payload is the last frame. Then one over 64 bytes (dead-lettered with
    // its topic frame among its first bytes) and one more that arrives.
    let mut m = ZmqMessage::from(Bytes::from_static(b"readings"));
    m.push_back(Bytes::from_static(b"payload"));
    push.send(m).await.unwrap();
    let mut big = ZmqMessage::from(Bytes::from_static(b"readings"));
    big.push_back(Bytes::from(vec![b'x'; 100]));
    push.send(big).await.unwrap();
    push.send(Bytes::from_static(b"after").into())
        .await
        .unwrap();
    wait_for(&running, 2, 1).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![b"payload".to_vec(), b"after".to_vec()]
    );
    let letter = &dlq.list()[0];
    assert_eq!(letter.envelope.header(SIZE_HEADER), Some("108"));
    assert!(letter.envelope.payload.starts_with(b"readingsxxx"));
    assert_eq!(letter.envelope.header(TOPIC_HEADER), None);
    running.shutdown().await;
}

#[tokio::test]
async fn a_limit_on_an_ipc_endpoint_is_refused_with_the_reason() {
    let e = ZmqSource::pull()
        .max_message_bytes(10)
        .bind("ipc:///tmp/switchyard-test.sock")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("only tcp:// endpoints take a message size limit"),
        "{e}"
    );
}
