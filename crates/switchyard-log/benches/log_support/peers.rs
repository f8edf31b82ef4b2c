//! The other servers part (b) of the log bench compares with: a pipelined JetStream publisher
//! and Redis `XADD` clients, over plain TCP (no client crates).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{PAYLOAD, Run, percentile};

/// A pipelined JetStream publisher: one connection, at most `window` publishes awaiting their
/// ack (what `PublishAsync` with a max-pending of `window` does), on a fresh file-stored
/// stream.
pub(crate) struct JetStream {
    admin: NatsSync,
    w: BufWriter<TcpStream>,
    r: Option<BufReader<TcpStream>>,
    window: usize,
    seq: usize,
}

impl JetStream {
    pub(crate) fn new(addr: &str, window: usize) -> Self {
        let mut admin = NatsSync::connect(addr);
        let _ = admin.request("$JS.API.STREAM.DELETE.SWLOGBENCH", b"");
        let created = admin.request(
            "$JS.API.STREAM.CREATE.SWLOGBENCH",
            br#"{"name":"SWLOGBENCH","subjects":["swlogbench.>"],"storage":"file"}"#,
        );
        assert!(
            !String::from_utf8_lossy(&created).contains("\"error\""),
            "{}",
            String::from_utf8_lossy(&created)
        );
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        let mut w = BufWriter::new(conn);
        w.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.swlogasync.* 1\r\n",
        )
        .unwrap();
        w.flush().unwrap();
        Self {
            admin,
            w,
            r: Some(r),
            window,
            seq: 0,
        }
    }

    /// Publishes `count` messages, keeping up to `window` in flight; returns the seconds it
    /// took and each publish's latency (publish to ack).
    pub(crate) fn run(&mut self, count: usize) -> (f64, Vec<Duration>) {
        let first = self.seq;
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let (tokens_tx, tokens_rx) = std::sync::mpsc::sync_channel::<()>(self.window);
        for _ in 0..self.window {
            tokens_tx.send(()).unwrap();
        }
        let epoch = Instant::now();
        let mut r = self.r.take().unwrap();
        let reader = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(count);
                let mut line = String::new();
                while lat.len() < count {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let Some(rest) = line.strip_prefix("MSG ") else {
                        assert!(!line.starts_with("-ERR"), "nats: {line}");
                        continue;
                    };
                    let mut parts = rest.split_whitespace();
                    let subject = parts.next().unwrap();
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    let seq: usize = subject.rsplit('.').next().unwrap().parse().unwrap();
                    let mut body = vec![0u8; len + 2];
                    r.read_exact(&mut body).unwrap();
                    assert!(
                        body.starts_with(b"{\"stream\""),
                        "{}",
                        String::from_utf8_lossy(&body)
                    );
                    let now = epoch.elapsed().as_nanos() as u64;
                    lat.push(Duration::from_nanos(
                        now - sent[seq - first].load(Ordering::Relaxed),
                    ));
                    let _ = tokens_tx.send(());
                }
                (r, lat)
            })
        };
        let start = Instant::now();
        for k in 0..count {
            if tokens_rx.try_recv().is_err() {
                self.w.flush().unwrap();
                tokens_rx.recv().unwrap();
            }
            sent[k].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            write!(
                self.w,
                "PUB swlogbench.x _INBOX.swlogasync.{} 64\r\n",
                first + k
            )
            .unwrap();
            self.w.write_all(&PAYLOAD).unwrap();
            self.w.write_all(b"\r\n").unwrap();
        }
        self.w.flush().unwrap();
        let (r, lat) = reader.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        self.r = Some(r);
        self.seq += count;
        (secs, lat)
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        let _ = self.admin.request("$JS.API.STREAM.DELETE.SWLOGBENCH", b"");
    }
}

/// A minimal blocking NATS request client, for stream administration.
struct NatsSync {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl NatsSync {
    fn connect(addr: &str) -> Self {
        let w = TcpStream::connect(addr).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        let mut n = Self { w, r };
        n.w.write_all(b"CONNECT {\"verbose\":false}\r\nSUB _INBOX.swlogadmin 1\r\n")
            .unwrap();
        n
    }

    fn request(&mut self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let mut msg = format!("PUB {subject} _INBOX.swlogadmin {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.w.write_all(&msg).unwrap();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            if line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n").unwrap();
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
                let mut body = vec![0u8; len + 2];
                self.r.read_exact(&mut body).unwrap();
                body.truncate(len);
                return body;
            } else if line.starts_with("-ERR") {
                panic!("nats: {line}");
            }
        }
    }
}

/// Redis `XADD` round trips from `clients` threads, one outstanding each.
pub(crate) fn redis_rate(addr: &str, clients: usize, total: usize) -> Run {
    let per = total.div_ceil(clients);
    let mut cmd =
        b"*5\r\n$4\r\nXADD\r\n$10\r\nswlogbench\r\n$1\r\n*\r\n$1\r\np\r\n$64\r\n".to_vec();
    cmd.extend_from_slice(&PAYLOAD);
    cmd.extend_from_slice(b"\r\n");
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let cmd = cmd.clone();
                s.spawn(move || {
                    let mut w = TcpStream::connect(addr).unwrap();
                    w.set_nodelay(true).unwrap();
                    let mut r = BufReader::new(w.try_clone().unwrap());
                    let mut lat = Vec::with_capacity(per);
                    let mut line = String::new();
                    for _ in 0..per {
                        let t = Instant::now();
                        w.write_all(&cmd).unwrap();
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        assert!(line.starts_with('$'), "redis: {line}");
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut w = TcpStream::connect(addr).unwrap();
    w.write_all(b"*2\r\n$3\r\nDEL\r\n$10\r\nswlogbench\r\n")
        .unwrap();
    lat.sort_unstable();
    Run {
        rate: (per * clients) as f64 / secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cpu_per_m: f64::NAN,
        per_sync: f64::NAN,
    }
}
