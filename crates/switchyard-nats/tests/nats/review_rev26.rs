//! Review rev26: the same bus API on every transport. Each test runs one scenario on the
//! in-memory bus (`Bus::new`'s path), on the embedded log (a temporary directory) and on NATS
//! JetStream (the shared server, a stream and subject prefix of its own, deleted at the end),
//! and asserts the same observable outcome, or the difference docs/transports.md states.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, BusBuilder, DeadLetter, DeadLetterSink, Envelope, Message, MessageId, Topic,
};
use switchyard_core::Pattern;
use switchyard_log::{LogConfig, LogTransport};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::mpsc;

use crate::harness::{SHARED_URL, shared_unavailable};

mod flow;
mod lifecycle;
mod more;

pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Which transport a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    Memory,
    Log,
    Nats,
}

/// The three transports, or the two local ones when the shared NATS server is unreachable
/// outside CI (the harness prints why).
pub(crate) fn transports() -> Vec<On> {
    let mut all = vec![On::Memory, On::Log];
    if shared_unavailable().is_none() {
        all.push(On::Nats);
    }
    all
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub n: u64,
}
impl Message for Job {
    const TOPIC: &'static str = "rev26.jobs";
}

pub(crate) fn n_of(env: &Envelope) -> u64 {
    serde_json::from_slice::<Job>(&env.payload).unwrap().n
}

/// A dead-letter sink that also sends each letter on a channel, to wait on.
#[derive(Clone)]
pub(crate) struct Letters {
    tx: mpsc::UnboundedSender<DeadLetter>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<DeadLetter>>>,
    all: Arc<Mutex<Vec<DeadLetter>>>,
}

impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        self.all.lock().unwrap().push(letter.clone());
        let _ = self.tx.send(letter);
    }
}

impl Letters {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            all: Arc::default(),
        }
    }

    /// The next `n` dead letters, or a panic naming the transport after `WAIT`.
    pub async fn next(&self, on: On, n: usize) -> Vec<DeadLetter> {
        let mut rx = self.rx.lock().await;
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some(l)) => got.push(l),
                _ => panic!("{on:?}: {} of {n} dead letters after {WAIT:?}", got.len()),
            }
        }
        got
    }

    pub fn all(&self) -> Vec<DeadLetter> {
        self.all.lock().unwrap().clone()
    }
}

/// A bus on one transport, with its own subject prefix (`rev26<tag>`) and dead-letter sink.
pub(crate) struct Rig {
    pub bus: Bus,
    pub prefix: String,
    pub letters: Letters,
    nats: Option<(NatsTransport, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Rig {
    pub async fn new(on: On) -> Self {
        Self::with(on, |b| b).await
    }

    pub async fn with(on: On, configure: impl FnOnce(BusBuilder) -> BusBuilder) -> Self {
        Self::with_subjects(on, &[], configure).await
    }

    /// On NATS, the test's stream also holds `extra` (fixed topics such as
    /// `switchyard.session.#`: one stream on the server may hold them, so only one test uses
    /// each, and deletes the stream at its end).
    pub async fn with_subjects(
        on: On,
        extra: &[&str],
        configure: impl FnOnce(BusBuilder) -> BusBuilder,
    ) -> Self {
        let tag = MessageId::new().to_string().replace('-', "").to_lowercase();
        let prefix = format!("rev26{tag}");
        let letters = Letters::new();
        let builder = configure(Bus::builder().dead_letters(letters.clone()));
        let (bus, nats, dir) = match on {
            On::Memory => (builder.build().unwrap(), None, None),
            On::Log => {
                let dir = tempfile::tempdir().unwrap();
                let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
                (builder.transport(log).build().unwrap(), None, Some(dir))
            }
            On::Nats => {
                let stream = format!("REV26_{tag}");
                let mut subjects = vec![Pattern::new(&format!("{prefix}.#")).unwrap()];
                subjects.extend(extra.iter().map(|p| Pattern::new(p).unwrap()));
                let config = NatsConfig::new(SHARED_URL).with_stream(&stream, subjects);
                let nats = NatsTransport::connect(config).await.unwrap();
                let bus = builder.transport(nats.clone()).build().unwrap();
                (bus, Some((nats, stream)), None)
            }
        };
        Self {
            bus,
            prefix,
            letters,
            nats,
            _dir: dir,
        }
    }

    /// `<prefix>.<rest>`.
    pub fn topic(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    /// A `Job` envelope on `<prefix>.<rest>`.
    pub fn job(&self, rest: &str, n: u64) -> Envelope {
        let mut env = Job { n }.to_envelope().unwrap();
        env.topic = Topic::new(&self.topic(rest)).unwrap();
        env
    }

    pub async fn end(self) {
        let _ = self.bus.shutdown(WAIT).await;
        if let Some((nats, stream)) = self.nats {
            nats.delete_stream(&stream).await.unwrap();
        }
    }
}
