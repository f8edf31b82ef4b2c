//! A `nats-server` the test owns (RAII: killed on drop) and the conformance harness.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use switchyard_conformance::{
    Harness, ReplyFn, RequestFailure, ServeGuard, Setup, SuiteCapabilities,
};
use switchyard_core::{BoxError, BoxFuture, Envelope, Pattern};
use switchyard_nats::{NatsConfig, NatsTransport, RequestError};
use tempfile::TempDir;

pub const SHARED_URL: &str = "nats://127.0.0.1:4222";
const SERVER_BIN: &str = "/usr/sbin/nats-server";

/// `Some(reason)` when the shared server is unreachable and we are not under CI.
pub fn shared_unavailable() -> Option<String> {
    let up = TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if up || ci {
        return None;
    }
    let msg = "NATS server unreachable on 127.0.0.1:4222 (start it with `nats-server -js`); \
               set CI=true to make this a failure";
    eprintln!("\n!!!!!!!! SKIPPING NATS TEST: {msg} !!!!!!!!\n");
    Some(msg.to_owned())
}

/// True when `nats-server` can be spawned here; under CI it must be.
pub fn server_binary_available() -> bool {
    let ok = std::path::Path::new(SERVER_BIN).exists();
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{SERVER_BIN} is missing under CI");
        eprintln!("\n!!!!!!!! SKIPPING: {SERVER_BIN} not installed !!!!!!!!\n");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JetStream server on a free loopback port with its own store directory. Killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn(port, &dir);
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server stops reading and answering, its connections stay open (a
    /// stalled server); [`NatsServer::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}: {status}");
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, &self.dir));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns the server and waits (event: its "Server is ready" log line) up to 15 s.
fn spawn(port: u16, dir: &TempDir) -> Child {
    spawn_args(&[
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-sd".into(),
        dir.path().display().to_string(),
    ])
}

/// Spawns `nats-server` with `args` and waits for "Server is ready" (up to 15 s).
pub fn spawn_args(args: &[String]) -> Child {
    let mut child = Command::new(SERVER_BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nats-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads the log to its end so the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(15))
        .expect("nats-server did not become ready");
    child
}

/// Three JetStream servers on loopback with cluster routes between them. Killed on drop.
pub struct Cluster {
    nodes: Vec<(Option<Child>, u16, TempDir)>,
}

impl Cluster {
    pub fn start() -> Self {
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        // Start all three before waiting on any: JetStream needs the others to be ready.
        let mut pending = Vec::new();
        for i in 0..3 {
            let routes: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", cluster[j]))
                .collect();
            let args: Vec<String> = vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client[i].to_string(),
                "-n".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "sy".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster[i]),
                "--routes".into(),
                routes.join(","),
                "-sd".into(),
                dirs[i].path().display().to_string(),
            ];
            pending.push(args);
        }
        let handles: Vec<_> = pending
            .into_iter()
            .map(|args| std::thread::spawn(move || spawn_args(&args)))
            .collect();
        for ((h, port), dir) in handles.into_iter().zip(client).zip(dirs) {
            nodes.push((Some(h.join().unwrap()), port, dir));
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, p, _)| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the node listening for clients on `port`.
    pub fn node_on(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|(_, p, _)| *p == port)
    }

    /// SIGKILL one node.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The conformance harness: the shared server, or one it owns (then it can restart it).
pub struct NatsHarness {
    url: String,
    server: Option<Arc<Mutex<NatsServer>>>,
    unavailable: Option<String>,
}

impl NatsHarness {
    pub fn shared() -> Self {
        Self {
            url: SHARED_URL.to_owned(),
            server: None,
            unavailable: shared_unavailable(),
        }
    }

    pub fn owned() -> Self {
        if !server_binary_available() {
            return Self {
                url: String::new(),
                server: None,
                unavailable: Some("nats-server is not installed".into()),
            };
        }
        let server = NatsServer::start();
        Self {
            url: server.url(),
            server: Some(Arc::new(Mutex::new(server))),
            unavailable: None,
        }
    }

    pub fn server(&self) -> Option<Arc<Mutex<NatsServer>>> {
        self.server.clone()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn config(&self, setup: &Setup) -> NatsConfig {
        NatsConfig::new(self.url.clone())
            .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
            .with_ack_wait(setup.ack_wait)
            .with_max_deliver(setup.max_deliver)
            .with_dead_letters(setup.dead_letters.clone())
            .with_max_age(Duration::from_secs(3600))
            // JetStream reserves a stream's max_bytes of the server's storage: keep the
            // reservations of test streams small.
            .with_max_bytes(64 << 20)
            .with_ack_timeout(Duration::from_secs(1))
            .with_publish_timeout(Duration::from_secs(20))
            // A closing subscription waits for its open pull request to end: keep closes
            // short in tests (the default is 1 s).
            .with_pull_expires(Duration::from_millis(250))
    }
}

impl Harness for NatsHarness {
    type Transport = NatsTransport;

    fn name(&self) -> &str {
        "nats"
    }

    fn capabilities(&self) -> SuiteCapabilities {
        SuiteCapabilities {
            core: switchyard_core::Capabilities {
                durable: true,
                ordered: true,
                consumer_groups: true,
                wildcards: true,
                delayed_delivery: false,
                dedup: true,
            },
            redelivery: true,
            dead_letters: true,
            restart: self.server.is_some(),
            request_reply: true,
            durable_delivery_counts: true,
            // Each open is a connection of its own; commands travel over core NATS.
            cross_process: true,
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<NatsTransport, BoxError>> {
        let config = self.config(setup);
        Box::pin(async move { Ok(NatsTransport::connect(config).await?) })
    }

    fn restart<'a>(
        &'a self,
        _setup: &'a Setup,
        transport: NatsTransport,
    ) -> BoxFuture<'a, Result<NatsTransport, BoxError>> {
        let server = self.server.clone();
        Box::pin(async move {
            let server = server.ok_or("no owned server")?;
            tokio::task::spawn_blocking(move || server.lock().unwrap().restart()).await?;
            Ok(transport)
        })
    }

    fn request(
        &self,
        transport: &NatsTransport,
        request: Envelope,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Envelope, RequestFailure>> {
        let t = transport.clone();
        Box::pin(async move {
            t.request(request, deadline).await.map_err(|e| match e {
                RequestError::NoResponders { .. } => RequestFailure::NoResponders,
                RequestError::Timeout { .. } => RequestFailure::Timeout,
                other => RequestFailure::Other(other.into()),
            })
        })
    }

    fn serve(
        &self,
        transport: &NatsTransport,
        pattern: &Pattern,
        handler: ReplyFn,
    ) -> BoxFuture<'static, Result<ServeGuard, BoxError>> {
        let t = transport.clone();
        let pattern = pattern.clone();
        Box::pin(async move {
            let mut requests = t.respond(&pattern, None).await?;
            let task = tokio::spawn(async move {
                while let Some(req) = requests.next().await {
                    if let Some(reply) = handler(req.envelope.clone()) {
                        let _ = req.reply(reply).await;
                    }
                }
            });
            Ok(ServeGuard::new(AbortOnDrop(task)))
        })
    }

    fn cleanup<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(t) = NatsTransport::connect(NatsConfig::new(self.url.clone())).await {
                let _ = t.delete_stream(&setup.namespace).await;
            }
        })
    }
}

pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `max_payload` of a [`SmallPayloadServer`].
pub const SMALL_MAX_PAYLOAD: usize = 4096;

/// A nats-server of the test's own with `max_payload` [`SMALL_MAX_PAYLOAD`] (or another
/// limit, [`start_with`](Self::start_with)) and JetStream when asked, on a free port and a
/// temp dir, killed on drop.
pub struct SmallPayloadServer {
    child: Child,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    jetstream: bool,
    dir: TempDir,
}

impl SmallPayloadServer {
    pub fn start(jetstream: bool) -> Self {
        Self::start_with(jetstream, SMALL_MAX_PAYLOAD)
    }

    /// A server whose `max_payload` is `max_payload`.
    pub fn start_with(jetstream: bool, max_payload: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(port, jetstream, &dir, max_payload);
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            jetstream,
            dir,
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store, with
    /// `max_payload` as its limit: clients reconnect to a server with another limit.
    pub fn restart_with(&mut self, max_payload: usize) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.jetstream, &self.dir, max_payload);
    }

    fn spawn(port: u16, jetstream: bool, dir: &TempDir, max_payload: usize) -> Child {
        let mut conf = format!("listen: 127.0.0.1:{port}\nmax_payload: {max_payload}\n");
        if jetstream {
            conf.push_str(&format!(
                "jetstream {{ store_dir: \"{}\" }}\n",
                dir.path().join("js").display()
            ));
        }
        let path = dir.path().join("server.conf");
        std::fs::write(&path, conf).unwrap();
        spawn_args(&["-c".into(), path.display().to_string()])
    }
}

impl Drop for SmallPayloadServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
