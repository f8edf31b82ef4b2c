use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use switchyard_core::{BoxError, Envelope, Outcome};
use switchyard_middleware::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

#[tokio::test(start_paused = true)]
async fn concurrency_limit_is_backpressure_not_an_error() {
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicU32::new(0));
    let (g, r) = (gate.clone(), running.clone());
    let svc = ConcurrencyLimitLayer::new(2).layer(tower::service_fn(move |_e: Envelope| {
        let (g, r) = (g.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    crate::common::assert_handler(&svc);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        tasks.push(tokio::spawn(s.call(env("a.b"))));
    }
    crate::common::wait_for("two running", || running.load(Ordering::SeqCst) == 2).await;
    let mut third = svc.clone();
    assert!(
        third.ready().now_or_never().is_none(),
        "third waits for a permit"
    );
    gate.add_permits(1);
    third.ready().await.unwrap();
    tasks.push(tokio::spawn(third.call(env("a.b"))));
    gate.add_permits(2);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Outcome::Ack);
    }
}

#[tokio::test(start_paused = true)]
async fn token_bucket_spaces_calls_by_the_rate() {
    let svc = RateLimitLayer::new(2, Duration::from_secs(1))
        .burst(2)
        .layer(tower::service_fn(|_e: Envelope| async {
            Ok::<_, BoxError>(Outcome::Ack)
        }));
    crate::common::assert_handler(&svc);
    let start = Instant::now();
    let mut at = Vec::new();
    let mut s = svc.clone();
    for _ in 0..5 {
        s.ready().await.unwrap();
        at.push(start.elapsed());
        s.call(env("a.b")).await.unwrap();
    }
    let ms = |n| Duration::from_millis(n);
    // Burst of two, then one every 500 ms (timer wheel granularity: 1 ms).
    assert_eq!(at[0], ms(0));
    assert_eq!(at[1], ms(0));
    for (got, want) in at[2..].iter().zip([500u64, 1000, 1500]) {
        assert!(
            *got >= ms(want) && *got <= ms(want + 1),
            "{got:?} vs {want} ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_bucket_and_unused_tokens_come_back() {
    let svc = RateLimitLayer::new(1, Duration::from_secs(10)).layer(tower::service_fn(
        |_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) },
    ));
    let mut a = svc.clone();
    a.ready().await.unwrap();
    let mut b = svc.clone();
    assert!(
        b.ready().now_or_never().is_none(),
        "the only token is held by a"
    );
    drop(a);
    assert!(b.ready().now_or_never().is_some(), "a gave its token back");
}
