//! Overhead of the default resilience stack per message versus a bare handler, in one run:
//!
//! - `handler/bare`: the handler called directly (`ready` + `call`);
//! - `handler/default_stack`: the same handler behind `ResilienceLayer` with its defaults
//!   (trace, metrics, retry, breaker, timeout, panic capture), on the happy path;
//! - `handler/default_stack_dedup`: the same with dedup by message id on;
//! - `handler/layer/*`: each layer alone around the handler, to see where the time goes.
//!
//! No metrics recorder is installed (the facade's no-op), as in a process that does not export
//! metrics; the in-process registry still counts.
//!
//! After the criterion groups, an interleaved summary alternates bare and default-stack rounds
//! (21 rounds of 200,000 messages each) and prints the median time per message of each and the
//! median of the per-round differences: the figure the target (under 150 ns added) is
//! about, and one that a busy machine disturbs less than two separate runs. Run:
//! `cargo bench -p switchyard-middleware --bench stack`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use criterion::{Criterion, criterion_group};
use switchyard_core::{BoxError, Envelope, MessageId, Outcome, Topic};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer};
use switchyard_middleware::catch_panic::CatchPanicLayer;
use switchyard_middleware::dedup::DedupConfig;
use switchyard_middleware::metrics::MetricsLayer;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::{RetryLayer, RetryPolicy};
use switchyard_middleware::timeout::TimeoutLayer;
use switchyard_middleware::trace::TraceLayer;
use tower::{Layer, Service, ServiceExt};

fn handler() -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(|_env: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) })
}

/// Times `iters` messages through `svc`, each with a fresh message id.
fn run<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
) where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let template = Envelope::new(Topic::new("bench.topic").unwrap(), "{}");
    let mut next_id: u128 = 1;
    c.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            let template = template.clone();
            let first = next_id;
            next_id += u128::from(iters);
            async move {
                let start = Instant::now();
                for i in 0..u128::from(iters) {
                    let mut env = template.clone();
                    env.id = MessageId::from_u128(first + i);
                    svc.ready().await.unwrap().call(env).await.unwrap();
                }
                start.elapsed()
            }
        })
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("handler");
    run(&mut g, &rt, "bare", handler());
    run(
        &mut g,
        &rt,
        "default_stack",
        ResilienceLayer::new("bench", ResilienceConfig::default()).layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "default_stack_dedup",
        ResilienceLayer::new(
            "bench",
            ResilienceConfig::default().dedup(DedupConfig::default().capacity(10_000)),
        )
        .layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/trace",
        TraceLayer::new("b").layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/metrics",
        MetricsLayer::new("b").layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/retry",
        RetryLayer::new(RetryPolicy::default()).layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/breaker",
        BreakerLayer::new("b", BreakerConfig::default()).layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/timeout",
        TimeoutLayer::default().layer(handler()),
    );
    run(
        &mut g,
        &rt,
        "layer/catch_panic",
        CatchPanicLayer::new().layer(handler()),
    );
    g.finish();
}

/// Times `n` messages through `svc`, per message.
fn round<S>(rt: &tokio::runtime::Runtime, svc: &mut S, first_id: u128, n: u128) -> f64
where
    S: Service<Envelope, Response = Outcome, Error = BoxError>,
{
    let template = Envelope::new(Topic::new("bench.topic").unwrap(), "{}");
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            let mut env = template.clone();
            env.id = MessageId::from_u128(first_id + i);
            svc.ready().await.unwrap().call(env).await.unwrap();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn interleaved() {
    const ROUNDS: usize = 21;
    const N: u128 = 200_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut bare = handler();
    let mut stack = ResilienceLayer::new("bench", ResilienceConfig::default()).layer(handler());
    let (mut b, mut s, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 1u128 << 100;
    // One warm-up round each, not counted.
    round(&rt, &mut bare, id, N);
    round(&rt, &mut stack, id + N, N);
    id += 2 * N;
    for _ in 0..ROUNDS {
        let tb = round(&rt, &mut bare, id, N);
        let ts = round(&rt, &mut stack, id + N, N);
        id += 2 * N;
        b.push(tb);
        s.push(ts);
        d.push(ts - tb);
    }
    println!(
        "interleaved ({ROUNDS} rounds x {N} messages): bare {:.1} ns/msg, default stack {:.1} ns/msg, added {:.1} ns/msg (median of per-round differences)",
        median(&mut b),
        median(&mut s),
        median(&mut d)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    interleaved();
    Criterion::default().configure_from_args().final_summary();
}
