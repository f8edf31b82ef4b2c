//! A ZeroMQ PULL endpoint with a message size limit that holds at most the limit in memory.
//!
//! The `zeromq` crate reads every frame whole before handing it over, whatever its size, so a
//! peer announcing a 256 MiB frame makes the process allocate 256 MiB, and there is no setting
//! to refuse it (libzmq's `ZMQ_MAXMSGSIZE` drops the connection without telling anyone). When a
//! [`ZmqSource`](crate::zmq::ZmqSource) has a `max_message_bytes`, its PULL socket is this
//! module instead: ZMTP 3.x with the NULL mechanism (what PUSH sockets of libzmq, pyzmq and the
//! `zeromq` crate speak by default), reading each frame's announced size first and, past the
//! limit, discarding the rest of the message in small chunks while keeping a reference to it
//! (its size, its peer and its first bytes) for the dead-letter queue.
//!
//! Bound, it accepts any number of PUSH peers, each served by its own task; connected, it
//! reconnects with backoff when the peer goes away. Messages from every peer go through one
//! bounded channel, so a slow pipeline slows the peers (TCP backpressure) instead of buffering.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes of an oversize message kept in its dead letter.
pub(crate) const HEAD_BYTES: usize = 256;

/// Longest command body accepted (READY with its properties, PING); longer closes the peer.
const MAX_COMMAND_BYTES: u64 = 64 * 1024;

/// Messages waiting between the peers' tasks and the source.
const CHANNEL: usize = 64;

/// What a peer sent.
#[derive(Debug)]
pub(crate) enum Received {
    /// A message within the limit: its frames.
    Message(Vec<Bytes>),
    /// A message over the limit, discarded as it arrived.
    Oversize {
        /// Its size in bytes (every frame).
        size: u64,
        /// Its first bytes (at most [`HEAD_BYTES`]).
        head: Bytes,
        /// The peer that sent it.
        peer: String,
    },
}

/// Why a peer's connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a ZMTP 3 peer: {0}")]
    Protocol(String),
    #[error("the source was closed")]
    Closed,
}

/// The receiving end: messages from every peer, and the tasks serving them.
#[derive(Debug)]
pub(crate) struct LimitedPull {
    rx: mpsc::Receiver<Received>,
    task: JoinHandle<()>,
}

impl LimitedPull {
    /// Binds `endpoint` (`tcp://host:port`); returns the endpoint actually bound.
    pub(crate) async fn bind(endpoint: &str, limit: usize) -> std::io::Result<(Self, String)> {
        let addr = tcp_addr(endpoint)?;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(async move {
            // Dropped with this task (when the source closes), a JoinSet aborts every peer's
            // task, so no connection outlives the source.
            let mut peers = tokio::task::JoinSet::new();
            loop {
                while peers.try_join_next().is_some() {}
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let tx = tx.clone();
                        peers.spawn(async move {
                            if let Err(e) = serve(stream, peer.to_string(), limit, &tx).await {
                                tracing::debug!(%peer, error = %e, "ZeroMQ peer left");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ZeroMQ accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok((Self { rx, task }, format!("tcp://{local}")))
    }

    /// Connects to `endpoint`; fails when the first connection cannot be made, then
    /// reconnects (100 ms doubling to 5 s) whenever the peer goes away.
    pub(crate) async fn connect(endpoint: &str, limit: usize) -> std::io::Result<Self> {
        let addr = tcp_addr(endpoint)?;
        let first = TcpStream::connect(addr).await?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(async move {
            let mut stream = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let s = match stream.take() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr).await {
                        Ok(s) => s,
                        Err(_) => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                backoff = Duration::from_millis(100);
                match serve(s, addr.to_string(), limit, &tx).await {
                    Err(PeerError::Closed) => break,
                    Err(e) => tracing::debug!(peer = %addr, error = %e, "ZeroMQ peer left"),
                    Ok(()) => {}
                }
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(backoff).await;
            }
        });
        Ok(Self { rx, task })
    }

    /// The next message from any peer; `None` once the serving task ended.
    pub(crate) async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// Stops accepting and drops every peer.
    pub(crate) fn close(self) {
        self.task.abort();
    }
}

impl Drop for LimitedPull {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tcp_addr(endpoint: &str) -> std::io::Result<SocketAddr> {
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what}: {endpoint:?} (expected tcp://host:port)"),
        )
    };
    let rest = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| invalid("only tcp:// endpoints take a message size limit"))?;
    let rest = rest.replace('*', "0.0.0.0");
    std::net::ToSocketAddrs::to_socket_addrs(&rest)
        .map_err(|_| invalid("not a host:port"))?
        .next()
        .ok_or_else(|| invalid("the host does not resolve"))
}

/// Our greeting: ZMTP 3.0, mechanism NULL, not a server.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// A READY command saying we are a PULL socket.
fn ready() -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.push(5);
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&4u32.to_be_bytes());
    body.extend_from_slice(b"PULL");
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// One frame header: (more, command, size).
async fn header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(bool, bool, u64), PeerError> {
    let flags = r.read_u8().await?;
    if flags & !0b111 != 0 {
        return Err(PeerError::Protocol(format!("frame flags {flags:#04x}")));
    }
    let size = if flags & 0b010 != 0 {
        r.read_u64().await?
    } else {
        u64::from(r.read_u8().await?)
    };
    Ok((flags & 0b001 != 0, flags & 0b100 != 0, size))
}

async fn command<R: AsyncRead + Unpin>(r: &mut R, size: u64) -> Result<Vec<u8>, PeerError> {
    if size > MAX_COMMAND_BYTES {
        return Err(PeerError::Protocol(format!("a command of {size} bytes")));
    }
    let mut body = vec![0u8; size as usize];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// The command's name and the rest of its body.
fn split_command(body: &[u8]) -> Result<(&[u8], &[u8]), PeerError> {
    let n = *body
        .first()
        .ok_or_else(|| PeerError::Protocol("an empty command".into()))? as usize;
    if body.len() < 1 + n {
        return Err(PeerError::Protocol("a truncated command name".into()));
    }
    Ok((&body[1..1 + n], &body[1 + n..]))
}

/// The `Socket-Type` property of a READY command's body.
fn socket_type(mut props: &[u8]) -> Option<&[u8]> {
    while let Some((&n, rest)) = props.split_first() {
        let n = n as usize;
        let name = rest.get(..n)?;
        let len = u32::from_be_bytes(rest.get(n..n + 4)?.try_into().ok()?) as usize;
        let value = rest.get(n + 4..n + 4 + len)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            return Some(value);
        }
        props = &rest[n + 4 + len..];
    }
    None
}

/// Greets a peer, checks it is a PUSH socket, then reads its messages into `tx` until it
/// leaves (`Ok`), breaks the protocol (`Err`) or the source is closed.
async fn serve(
    stream: TcpStream,
    peer: String,
    limit: usize,
    tx: &mpsc::Sender<Received>,
) -> Result<(), PeerError> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, read);
    write.write_all(&greeting()).await?;
    let mut theirs = [0u8; 64];
    r.read_exact(&mut theirs).await?;
    if theirs[0] != 0xff || theirs[9] != 0x7f {
        return Err(PeerError::Protocol("bad greeting signature".into()));
    }
    if theirs[10] < 3 {
        return Err(PeerError::Protocol(format!("ZMTP version {}", theirs[10])));
    }
    if &theirs[12..16] != b"NULL" || theirs[16..32].iter().any(|&b| b != 0) {
        return Err(PeerError::Protocol(
            "a security mechanism other than NULL".into(),
        ));
    }
    write.write_all(&ready()).await?;
    // Their READY.
    let (_, is_command, size) = header(&mut r).await?;
    if !is_command {
        return Err(PeerError::Protocol("a message before READY".into()));
    }
    let body = command(&mut r, size).await?;
    let (name, props) = split_command(&body)?;
    if name != b"READY" {
        return Err(PeerError::Protocol("no READY command".into()));
    }
    match socket_type(props) {
        Some(t) if t.eq_ignore_ascii_case(b"PUSH") => {}
        other => {
            return Err(PeerError::Protocol(format!(
                "a {} socket cannot send to PULL",
                String::from_utf8_lossy(other.unwrap_or(b"?"))
            )));
        }
    }
    read_messages(&mut r, &mut write, peer, limit, tx).await
}

async fn read_messages<R, W>(
    r: &mut R,
    w: &mut W,
    peer: String,
    limit: usize,
    tx: &mpsc::Sender<Received>,
) -> Result<(), PeerError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = limit as u64;
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    let mut oversize = false;
    let mut head = BytesMut::new();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let (more, is_command, size) = match header(r).await {
            Ok(h) => h,
            // The peer closed between messages: a normal end.
            Err(PeerError::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    && frames.is_empty()
                    && total == 0 =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if is_command {
            let body = command(r, size).await?;
            let (name, rest) = split_command(&body)?;
            if name == b"PING" && rest.len() >= 2 {
                // PONG with the PING's context.
                let mut pong = vec![0x04, (5 + rest.len() - 2) as u8, 4];
                pong.extend_from_slice(b"PONG");
                pong.extend_from_slice(&rest[2..]);
                w.write_all(&pong).await?;
            }
            continue;
        }
        total = total.saturating_add(size);
        if !oversize && total > limit {
            oversize = true;
            for f in frames.drain(..) {
                let room = HEAD_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&f[..f.len().min(room)]);
            }
        }
        if oversize {
            let mut left = size;
            while left > 0 {
                let room = HEAD_BYTES.saturating_sub(head.len());
                let n = (left as usize).min(scratch.len());
                let got = &mut scratch[..n];
                r.read_exact(got).await?;
                head.extend_from_slice(&got[..n.min(room)]);
                left -= n as u64;
            }
        } else {
            // Within the limit: `size` is at most `limit`, so this allocation is bounded.
            let mut frame = BytesMut::zeroed(size as usize);
            r.read_exact(&mut frame).await?;
            frames.push(frame.freeze());
        }
        if !more {
            let item = if oversize {
                Received::Oversize {
                    size: total,
                    head: std::mem::take(&mut head).freeze(),
                    peer: peer.clone(),
                }
            } else {
                Received::Message(std::mem::take(&mut frames))
            };
            tx.send(item).await.map_err(|_| PeerError::Closed)?;
            total = 0;
            oversize = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ready_names_pull_and_parses_back() {
        let r = ready();
        assert_eq!(r[0], 0x04);
        assert_eq!(r[1] as usize, r.len() - 2);
        let (name, props) = split_command(&r[2..]).unwrap();
        assert_eq!(name, b"READY");
        assert_eq!(socket_type(props), Some(&b"PULL"[..]));
    }

    #[test]
    fn endpoints_other_than_tcp_are_refused() {
        assert!(tcp_addr("ipc:///tmp/x").is_err());
        assert!(tcp_addr("tcp://nonsense").is_err());
        assert_eq!(
            tcp_addr("tcp://127.0.0.1:5555").unwrap().to_string(),
            "127.0.0.1:5555"
        );
    }

    /// A message cut off mid-frame is an error, not a message.
    #[tokio::test]
    async fn a_truncated_message_is_not_delivered() {
        let (tx, mut rx) = mpsc::channel(4);
        // One complete 3-byte message, then a frame announcing 10 bytes with 2 sent.
        let input: &[u8] = &[0x00, 3, b'a', b'b', b'c', 0x00, 10, b'x', b'y'];
        let mut r = input;
        let mut w = Vec::new();
        let e = read_messages(&mut r, &mut w, "p".into(), 100, &tx).await;
        assert!(matches!(e, Err(PeerError::Io(_))), "{e:?}");
        match rx.try_recv().unwrap() {
            Received::Message(f) => assert_eq!(f, vec![Bytes::from_static(b"abc")]),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn over_the_limit_only_the_head_is_kept_and_the_next_message_arrives() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut input = vec![0x01, 4];
        input.extend_from_slice(b"tpc1");
        input.push(0x02); // long frame
        input.extend_from_slice(&1000u64.to_be_bytes());
        input.extend(std::iter::repeat_n(7u8, 1000));
        input.extend_from_slice(&[0x00, 2, b'o', b'k']);
        let mut r = &input[..];
        let mut w = Vec::new();
        read_messages(&mut r, &mut w, "p".into(), 500, &tx)
            .await
            .unwrap();
        match rx.try_recv().unwrap() {
            Received::Oversize { size, head, peer } => {
                assert_eq!(size, 1004);
                assert_eq!(head.len(), HEAD_BYTES);
                assert_eq!(&head[..4], b"tpc1");
                assert_eq!(peer, "p");
            }
            other => panic!("{other:?}"),
        }
        match rx.try_recv().unwrap() {
            Received::Message(f) => assert_eq!(f, vec![Bytes::from_static(b"ok")]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_its_context() {
        let (tx, _rx) = mpsc::channel(4);
        let input: &[u8] = &[0x04, 9, 4, b'P', b'I', b'N', b'G', 0, 10, b'c', b'x'];
        let mut r = input;
        let mut w = Vec::new();
        read_messages(&mut r, &mut w, "p".into(), 100, &tx)
            .await
            .unwrap();
        assert_eq!(w, vec![0x04, 7, 4, b'P', b'O', b'N', b'G', b'c', b'x']);
    }
}
