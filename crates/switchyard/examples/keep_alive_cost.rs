//! The per-message cost of keeping log deliveries alive (`keep_alive.rs`): events 1→1 over
//! the log transport (`Durability::Never`, 64-byte payloads), one bus with keep-alive on (the
//! default `max_hold`) against one with it off (`max_hold(Duration::ZERO)`), 64 publishes in
//! flight. The two sides
//! alternate round by round; it prints the median of the per-round ratios on/off, of the
//! wall-clock time and of the CPU time of the whole process (every thread's run time from
//! `/proc/self/task/*/schedstat`, Linux only), the figure a loaded machine disturbs least.
//!
//! Run: `cargo run --release -p switchyard --example keep_alive_cost -- [rounds] [per_round] [on|off]`
//! (defaults 15 rounds of 20,000 events).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::{Bus, Envelope, Outcome, Topic, handler_fn};
use switchyard_log::{Durability, LogConfig, LogTransport};

struct Side {
    bus: Bus,
    seen: Arc<AtomicU64>,
    _sub: switchyard::Subscription,
    _dir: tempfile::TempDir,
}

async fn side(max_hold: Option<Duration>) -> Result<Side, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(Durability::Never))?;
    let mut b = Bus::builder().transport(log);
    if let Some(d) = max_hold {
        b = b.max_hold(d);
    }
    let bus = b.build()?;
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let sub = bus
        .subscribe(
            "sink",
            "bench.event",
            handler_fn(move |_env: Envelope| {
                s.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }
            }),
        )
        .start()
        .await?;
    Ok(Side {
        bus,
        seen,
        _sub: sub,
        _dir: dir,
    })
}

/// The CPU time of every thread of this process so far, in nanoseconds (0 where
/// `/proc/self/task` cannot be read).
fn cpu_ns() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
}

/// Publishes `n` events, each awaited, and waits until the handler has seen them all;
/// returns wall-clock and CPU nanoseconds per event.
async fn round(s: &Side, n: u64) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let cpu0 = cpu_ns();
    let topic = Topic::new("bench.event")?;
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let target = s.seen.load(Ordering::Relaxed) + n;
    let start = Instant::now();
    // Up to 64 publishes in flight, so the log's write latency does not hide the consumer's
    // cost.
    let mut left = n;
    while left > 0 {
        let k = left.min(64);
        left -= k;
        let batch = (0..k).map(|_| {
            s.bus
                .publish_envelope(Envelope::new(topic.clone(), payload.clone()))
        });
        for r in futures::future::join_all(batch).await {
            r?;
        }
    }
    while s.seen.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
    s.bus.run_until_idle().await;
    let wall = start.elapsed().as_nanos() as f64 / n as f64;
    Ok((wall, (cpu_ns() - cpu0) / n as f64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(15);
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    // `on` or `off` as a third argument runs that side alone (to count its instructions, e.g.
    // under `valgrind --tool=callgrind`).
    if let Some(only) = args.next() {
        let s = side((only == "off").then_some(Duration::ZERO)).await?;
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (w, c) = round(&s, n).await?;
            wall.push(w);
            cpu.push(c);
        }
        println!(
            "{only} alone, {rounds} rounds x {n} events: median {:.0} ns/event, CPU {:.0} ns/event",
            median(&mut wall),
            median(&mut cpu)
        );
        s.bus.shutdown(Duration::from_secs(5)).await?;
        return Ok(());
    }
    let on = side(None).await?;
    let off = side(Some(Duration::ZERO)).await?;
    // Warm-up.
    round(&on, n / 4).await?;
    round(&off, n / 4).await?;
    let (mut ons, mut offs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut on_cpu, mut off_cpu, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which side goes first.
        let (a, b) = if r % 2 == 0 {
            let a = round(&on, n).await?;
            (a, round(&off, n).await?)
        } else {
            let b = round(&off, n).await?;
            (round(&on, n).await?, b)
        };
        ons.push(a.0);
        offs.push(b.0);
        ratios.push(a.0 / b.0);
        on_cpu.push(a.1);
        off_cpu.push(b.1);
        cpu_ratios.push(a.1 / b.1);
    }
    println!(
        "{rounds} rounds x {n} events: keep-alive on median {:.0} ns/event, off median {:.0} \
         ns/event, median per-round ratio on/off {:.3}",
        median(&mut ons),
        median(&mut offs),
        median(&mut ratios)
    );
    println!(
        "CPU time: on median {:.0} ns/event, off median {:.0} ns/event, median per-round \
         ratio on/off {:.3}",
        median(&mut on_cpu),
        median(&mut off_cpu),
        median(&mut cpu_ratios)
    );
    on.bus.shutdown(Duration::from_secs(5)).await?;
    off.bus.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
