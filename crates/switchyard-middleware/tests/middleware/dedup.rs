use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use switchyard_core::{BoxError, Envelope, Outcome};
use switchyard_middleware::dedup::{DedupConfig, DedupKey, DedupLayer};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

/// Counts calls; fails the calls whose payload is "fail".
fn counting(
    calls: Arc<AtomicU32>,
) -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if e.payload.as_ref() == b"fail" {
                Err::<Outcome, BoxError>("boom".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_acked_without_calling_the_handler() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default()).handler("h");
    let handle = layer.handle();
    let svc = layer.layer(counting(calls.clone()));
    let e = env("a.b");
    for _ in 0..3 {
        assert_eq!(svc.clone().oneshot(e.clone()).await.unwrap(), Outcome::Ack);
    }
    svc.clone().oneshot(env("a.b")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.duplicates(), 2);
    assert!(handle.contains(&DedupKey::Id(e.id)));
}

/// A foreign id (a UUID from another client, kept as text) is a key like any other: two
/// copies that arrive as separate envelopes with the same id are handled once.
#[tokio::test(start_paused = true)]
async fn a_foreign_text_id_is_deduplicated() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default());
    let handle = layer.handle();
    let svc = layer.layer(counting(calls.clone()));
    let copy = || {
        let mut e = env("a.b");
        e.id = "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14".parse().unwrap();
        e
    };
    let (first, second) = (copy(), copy());
    assert!(!first.id.is_ulid());
    svc.clone().oneshot(first).await.unwrap();
    svc.clone().oneshot(second).await.unwrap();
    let mut other = env("a.b");
    other.id = "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c15".parse().unwrap();
    svc.clone().oneshot(other).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.duplicates(), 1);
    let key = DedupKey::Id("6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14".parse().unwrap());
    assert!(handle.contains(&key));
}

#[tokio::test(start_paused = true)]
async fn failures_do_not_mark_the_key() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default());
    let handle = layer.handle();
    let svc = layer.layer(counting(calls.clone()));
    let mut e = env("a.b");
    e.payload = "fail".into();
    assert!(svc.clone().oneshot(e.clone()).await.is_err());
    assert!(svc.clone().oneshot(e.clone()).await.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a failed message is redelivered to the handler"
    );
    assert_eq!(handle.duplicates(), 0);
    assert!(handle.is_empty());
}

#[tokio::test(start_paused = true)]
async fn keys_expire_after_the_ttl() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupLayer::new(DedupConfig::default().ttl(Duration::from_secs(10)))
        .layer(counting(calls.clone()));
    let e = env("a.b");
    svc.clone().oneshot(e.clone()).await.unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    svc.clone().oneshot(e.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    svc.clone().oneshot(e.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn capacity_evicts_the_oldest_keys() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default().capacity(2));
    let handle = layer.handle();
    let svc = layer.layer(counting(calls.clone()));
    let (a, b, c) = (env("a.b"), env("a.b"), env("a.b"));
    for e in [&a, &b, &c] {
        svc.clone().oneshot(e.clone()).await.unwrap();
    }
    assert_eq!(handle.len(), 2);
    assert_eq!(handle.evicted(), 1);
    svc.clone().oneshot(c.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "c is remembered");
    svc.clone().oneshot(a.clone()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "a was evicted and is handled again"
    );
}

#[tokio::test(start_paused = true)]
async fn custom_key_and_messages_without_key() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc =
        DedupLayer::new(DedupConfig::default().by_header("order")).layer(counting(calls.clone()));
    svc.clone()
        .oneshot(env("a.b").with_header("order", "7"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(env("a.b").with_header("order", "7"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(env("a.b").with_header("order", "8"))
        .await
        .unwrap();
    let no_key = env("a.b");
    svc.clone().oneshot(no_key.clone()).await.unwrap();
    svc.clone().oneshot(no_key).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// A handler that waits for a permit before answering; the payload decides the answer.
fn gated(
    gate: Arc<Semaphore>,
    calls: Arc<AtomicU32>,
) -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        let gate = gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            if e.payload.as_ref() == b"fail" {
                Err::<Outcome, BoxError>("boom".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn concurrent_copy_waits_for_the_first_and_is_acked() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default());
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let e = env("a.b");
    let first = tokio::spawn(svc.clone().oneshot(e.clone()));
    crate::common::wait_for("first call", || calls.load(Ordering::SeqCst) == 1).await;
    let mut second = Box::pin(svc.clone().oneshot(e.clone()));
    assert!(
        (&mut second).now_or_never().is_none(),
        "the copy waits while the first is in flight"
    );
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), Outcome::Ack);
    assert_eq!(second.await.unwrap(), Outcome::Ack);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.duplicates(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_copy_is_handled_when_the_first_fails() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupLayer::new(DedupConfig::default()).layer(gated(gate.clone(), calls.clone()));
    let mut failing = env("a.b");
    failing.payload = "fail".into();
    let first = tokio::spawn(svc.clone().oneshot(failing.clone()));
    crate::common::wait_for("first call", || calls.load(Ordering::SeqCst) == 1).await;
    let mut ok_copy = failing.clone();
    ok_copy.payload = "ok".into();
    let second = tokio::spawn(svc.clone().oneshot(ok_copy));
    gate.add_permits(2);
    assert!(first.await.unwrap().is_err());
    assert_eq!(second.await.unwrap().unwrap(), Outcome::Ack);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelled_call_releases_its_key() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(DedupConfig::default());
    let handle = layer.handle();
    let svc = layer.layer(gated(gate.clone(), calls.clone()));
    let e = env("a.b");
    let mut first = Box::pin(svc.clone().oneshot(e.clone()));
    assert!((&mut first).now_or_never().is_none());
    drop(first);
    assert!(handle.is_empty());
    gate.add_permits(1);
    assert_eq!(svc.clone().oneshot(e).await.unwrap(), Outcome::Ack);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
