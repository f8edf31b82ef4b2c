//! Runs N messages through one layer (or the default stack) on a current-thread runtime, for
//! counting instructions per message under valgrind, which, unlike wall time, does not depend
//! on what else the machine is doing:
//!
//! ```text
//! cargo build --release -p switchyard-middleware --example overhead
//! valgrind --tool=callgrind --toggle-collect=overhead::run target/release/examples/overhead stack 10000
//! ```
//!
//! Only `run` is counted (so one-time costs such as building the stack or calibrating the
//! time-stamp counter are not): divide the total by the number of messages.
//!
//! Variants: bare, stack, dedup, trace, metrics, retry, breaker, timeout, panic.
#![allow(clippy::unwrap_used)]
use switchyard_core::{BoxError, Envelope, MessageId, Outcome, Topic};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer};
use switchyard_middleware::catch_panic::CatchPanicLayer;
use switchyard_middleware::dedup::DedupConfig;
use switchyard_middleware::metrics::MetricsLayer;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::{RetryLayer, RetryPolicy};
use switchyard_middleware::timeout::TimeoutLayer;
use switchyard_middleware::trace::TraceLayer;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

type B = BoxCloneService<Envelope, Outcome, BoxError>;

fn h() -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<u128>().ok()),
    ) else {
        eprintln!(
            "usage: overhead <bare|stack|dedup|trace|metrics|retry|breaker|timeout|panic> <messages>"
        );
        std::process::exit(2);
    };
    let mut svc: B = match variant.as_str() {
        "bare" => B::new(h()),
        "stack" => B::new(ResilienceLayer::new("b", ResilienceConfig::default()).layer(h())),
        "dedup" => B::new(
            ResilienceLayer::new(
                "b",
                ResilienceConfig::default().dedup(DedupConfig::default().capacity(10_000)),
            )
            .layer(h()),
        ),
        "trace" => B::new(TraceLayer::new("b").layer(h())),
        "metrics" => B::new(MetricsLayer::new("b").layer(h())),
        "retry" => B::new(RetryLayer::new(RetryPolicy::default()).layer(h())),
        "breaker" => B::new(BreakerLayer::new("b", BreakerConfig::default()).layer(h())),
        "timeout" => B::new(TimeoutLayer::default().layer(h())),
        "panic" => B::new(CatchPanicLayer::new().layer(h())),
        other => {
            eprintln!("unknown variant {other}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let template = Envelope::new(Topic::new("bench.topic").unwrap(), "{}");
    // Warm up (first-use registrations, thread-locals) outside the counted part.
    run(&rt, &mut svc, &template, 0, 100);
    run(&rt, &mut svc, &template, 100, n);
}

/// Sends messages `first + 1 ..= first + n` through `svc`.
#[inline(never)]
fn run(rt: &tokio::runtime::Runtime, svc: &mut B, template: &Envelope, first: u128, n: u128) {
    rt.block_on(async move {
        for i in first..first + n {
            let mut env = template.clone();
            env.id = MessageId::from_u128(i + 1);
            svc.ready().await.unwrap().call(env).await.unwrap();
        }
    });
}
