//! Helpers shared by the log tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use switchyard_core::{Delivery, Envelope, Pattern, Publisher, Topic};
use switchyard_log::{LogConfig, LogSubscription, LogTransport};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

pub fn pattern(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

pub fn env(t: &str, payload: &str) -> Envelope {
    Envelope::new(topic(t), payload.to_owned())
}

pub fn keyed(t: &str, key: &str, payload: &str) -> Envelope {
    env(t, payload).with_header("ordering-key", key)
}

pub fn config(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
}

pub fn open(dir: &Path) -> LogTransport {
    LogTransport::open(config(dir)).unwrap()
}

/// The next delivery, failing the test after [`WAIT`].
pub async fn next(sub: &mut LogSubscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no delivery within the wait")
        .expect("subscription ended")
}

/// A delivery if one can be handed out right now.
pub fn try_next(sub: &mut LogSubscription) -> Option<Delivery> {
    sub.next().now_or_never().flatten()
}

pub async fn publish_all(log: &LogTransport, envs: Vec<Envelope>) {
    log.publish(envs).await.unwrap();
}

pub async fn close(log: &LogTransport) {
    log.close(std::time::Instant::now() + WAIT).await.unwrap();
}

pub fn payload(d: &Delivery) -> String {
    String::from_utf8(d.envelope.payload.to_vec()).unwrap()
}
