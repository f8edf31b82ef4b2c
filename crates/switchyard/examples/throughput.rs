//! Pushes events through the in-process bus and prints the rate: a quick way to see what
//! one publisher and one subscriber do on this machine (`cargo run --release --example
//! throughput -p switchyard -- 1000000`). The criterion benchmarks are the reference figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::{Bus, Envelope, Outcome, Overflow, Topic, handler_fn};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let bus = Bus::builder().queue_capacity(1024).build()?;
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let _sub = bus
        .subscribe(
            "sink",
            "bench.event",
            handler_fn(move |_env: Envelope| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    if s.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        d.notify_one();
                    }
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(60),
        })
        .start()
        .await?;
    let topic = Topic::new("bench.event")?;
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    for _ in 0..n {
        bus.publish_envelope(Envelope::new(topic.clone(), payload.clone()))
            .await?;
    }
    done.notified().await;
    let took = start.elapsed();
    println!(
        "{n} events in {took:?}: {:.0} events/s, {:.0} ns/event",
        n as f64 / took.as_secs_f64(),
        took.as_nanos() as f64 / n as f64
    );
    bus.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
