//! Three 256 MiB messages pushed at a PULL source limited to 1 MiB do not raise the process's
//! peak memory by more than the limit plus a margin: the frames are discarded as they arrive.
//! (Through the `zeromq` crate's own PULL socket each frame is read whole: the peak grows by
//! at least 256 MiB.) Its own test binary, so no other test's memory counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_core::InMemoryDeadLetters;
use switchyard_pipeline::zmq::{SIZE_HEADER, ZmqSource};
use switchyard_pipeline::{Pipeline, Runner, StageError, map_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A PUSH peer written by hand, so that sending costs no memory: ZMTP 3.0 greeting, READY
/// as PUSH, then each message as one long frame streamed from a 64 KiB buffer. Returns the
/// connection, to be closed once everything was received (closing a socket with unread data,
/// here the source's READY, resets it, and the peer may lose what it had not read yet).
async fn push_raw(endpoint: &str, sizes: &[u64], then: &[u8]) -> tokio::net::TcpStream {
    let addr = endpoint.strip_prefix("tcp://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    s.write_all(&greeting).await.unwrap();
    let mut theirs = [0u8; 64];
    s.read_exact(&mut theirs).await.unwrap();
    let mut ready = vec![0x04, 0, 5];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&4u32.to_be_bytes());
    ready.extend_from_slice(b"PUSH");
    ready[1] = (ready.len() - 2) as u8;
    s.write_all(&ready).await.unwrap();
    let chunk = vec![0xabu8; 64 * 1024];
    for &size in sizes {
        s.write_all(&[0x02]).await.unwrap();
        s.write_all(&size.to_be_bytes()).await.unwrap();
        let mut left = size as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
    }
    s.write_all(&[0x00, then.len() as u8]).await.unwrap();
    s.write_all(then).await.unwrap();
    s.flush().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_256_mib_frames_stay_within_the_limit_plus_a_margin() {
    let source = ZmqSource::pull()
        .max_message_bytes(MIB)
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = source.endpoint().to_owned();
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let mut running = Runner::new(Pipeline::new(map_fn("count", |_: Bytes| {
        Ok::<_, StageError>(())
    })))
    .dead_letters(dlq.clone())
    .start()
    .await
    .unwrap();
    running.spawn_source(source);
    let before = peak_rss();
    let big = 256 * MIB as u64;
    let connection = push_raw(&endpoint, &[big, big, big], b"small").await;
    let ok = running
        .monitor()
        .wait_until(Duration::from_secs(120), |m| {
            m.rejected() == 3 && m.completed() == 1
        })
        .await;
    assert!(ok, "{}", running.monitor().snapshot());
    drop(connection);
    let grown = peak_rss().saturating_sub(before);
    let margin = 32 * MIB;
    assert!(
        grown <= MIB + margin,
        "peak RSS grew by {} MiB receiving 768 MiB with a 1 MiB limit",
        grown / MIB
    );
    let letters = dlq.list();
    assert_eq!(letters.len(), 3);
    for l in &letters {
        assert_eq!(l.envelope.header(SIZE_HEADER), Some("268435456"));
        assert_eq!(
            l.envelope.payload.len(),
            256,
            "kept by reference: its first bytes"
        );
    }
    running.shutdown().await;
}
